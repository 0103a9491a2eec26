"""One-shot GPU check: the one command to run on a fresh GPU box (and in a session lent a device).

    python bench/device_check.py --out DIR [--wheels DIR] [--anchor PATH] [--stages a,b,...]
    python bench/device_check.py --dry-run --out DIR     # the same stages, tiny, on CPU (tests)

Stages, each run as its own process with its own time limit; one that fails is reported and the
others still run. Everything lands in ``--out``: one ``<stage>.log`` each, the JSON results, and
``summary.json`` / ``summary.md`` (ratios against the anchor, ready for BENCHMARKS.md). Runs, the
data cache and installed wheels go to ``--work`` (a new temporary folder by default).

  wheels      pip-install the wheels in ``--wheels`` (default ``.whl/`` when it holds any) into
              ``<work>/site`` with ``--no-index --no-deps``, for boxes without a registry
              (the device image lacks deepspeed and datasets); skipped when there are none
  env         versions, the card, and that ``reid``, deepspeed and datasets import
  anchor      ``gpu_anchor.py`` (the seed-literal step, bf16 eager, bf16 + compile), when given
  throughput  ``bench/train_throughput.py``: reid's full step, bf16 eager and bf16 + compile
  train       the embedded default through ``accelerate launch`` on one GPU in bf16 (the README's
              main job; the same R1 as on CPU is the check)
  zero2       a short 1-GPU DeepSpeed ZeRO-2 run of the default
  clip        the CLIP config (``configs/cuhk_pedes_clip.yaml``) on the generated data, with a random
              CLIP directory of ViT-B/16's size (``bench/random_clip.py``: nothing can be downloaded)
  metrics     ``bench/metrics_speed.py`` at CUHK-PEDES and ICFG-PEDES sizes
  eval        ``bench/eval_speed.py``: ranking under the standard and clothing-change protocols, at
              CUHK-PEDES and ICFG-PEDES sizes

``--dry-run`` makes every stage tiny and puts it on the CPU, so that the real run does not fail on
a typo; the test suite runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STAGES = ["wheels", "env", "anchor", "throughput", "train", "zero2", "clip", "metrics", "eval"]
CLIP_CONFIG = REPO / "configs" / "cuhk_pedes_clip.yaml"


def stage_commands(name: str, args, out: Path) -> list[list[str]] | str:
    """The command lines of one stage, or a string saying why it is skipped."""
    py, dry = sys.executable, args.dry_run
    launch = [py, "-m", "accelerate.commands.launch"]
    runs = str(args.work / "runs")
    if name == "wheels":
        wheels = sorted(Path(args.wheels).glob("*.whl")) if args.wheels else []
        if not wheels:
            return f"no wheels in {args.wheels or '(none given)'}"
        return [[py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                 "--upgrade", "--target", str(args.work / "site"), *map(str, wheels)]]
    if name == "env":
        code = ("import json, torch, transformers, accelerate, reid; import deepspeed, datasets;"
                "print(json.dumps({'python': __import__('sys').version.split()[0], 'torch': torch.__version__,"
                "'cuda': torch.version.cuda, 'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',"
                "'transformers': transformers.__version__, 'pyarrow': __import__('pyarrow').__version__, 'accelerate': accelerate.__version__,"
                "'deepspeed': deepspeed.__version__, 'datasets': datasets.__version__}))")
        return [[py, "-c", code]]
    if name == "anchor":
        if not args.anchor or not Path(args.anchor).is_file():
            return f"no anchor script at {args.anchor or '(none given)'}"
        cmd = [py, str(args.anchor), "--out", str(out / "anchor.json"), "--variants", args.anchor_variants]
        return [cmd + (["--tiny", "--batch", "8", "--steps", "1", "--warm", "1"] if dry else [])]
    if name == "throughput":
        cmd = [py, str(REPO / "bench" / "train_throughput.py"), "--out", str(out / "throughput.json")]
        return [cmd + (["--preset", "tiny", "--batch", "8", "--steps", "1", "--warmup", "1",
                        "--device", "cpu", "--variants", "bf16"] if dry else [])]
    common = [f"train.output_dir={runs}", "train.progress=false"]
    if name == "train":
        setup = (["--cpu", "--num_processes", "1", "--mixed_precision", "no"] if dry else
                 ["--config_file", str(REPO / "accelerate_configs" / "single_gpu.yaml")])
        over = ["train.run_name=default-bf16"] + (["train.epochs=1", "train.max_steps=3"] if dry else [])
        return [launch + setup + [str(REPO / "launch" / "train.py")] + common + over]
    if name == "zero2":
        setup = (["--config_file", str(REPO / "accelerate_configs" / "cpu_zero2.yaml"), "--num_processes", "1"] if dry else
                 ["--config_file", str(REPO / "accelerate_configs" / "zero2.yaml"), "--num_processes", "1",
                  "--mixed_precision", "bf16"])
        over = ["train.run_name=zero2-1gpu", "train.epochs=2", f"train.max_steps={3 if dry else 40}"]
        return [launch + setup + [str(REPO / "launch" / "train.py")] + common + over]
    if name == "clip":
        # No weights can be downloaded: a random CLIP directory of ViT-B/16's size (tiny in a dry run),
        # then the CLIP config on the generated synthetic data. Speed and memory are CLIP's.
        clip_dir = args.work / f"clip-random-{'tiny' if dry else 'base'}"
        make = [py, str(REPO / "bench" / "random_clip.py"), "--out", str(clip_dir), "--size", "tiny" if dry else "base"]
        setup = ["--cpu", "--num_processes", "1", "--mixed_precision", "no"] if dry else [
            "--config_file", str(REPO / "accelerate_configs" / "single_gpu.yaml")]
        over = [f"model.image_encoder.path={clip_dir}", f"model.text_encoder.path={clip_dir}", "data.root=",
                "train.run_name=clip", "train.epochs=1",
                f"train.max_steps={3 if dry else 40}", "optim.warmup_steps=2"]
        over += ["data.image_size=[32,32]", "data.batch_size=8", "data.num_workers=0"] if dry else []
        return [make, launch + setup + [str(REPO / "launch" / "train.py"), "--config", str(CLIP_CONFIG)] + common + over]
    if name == "metrics":
        return [[py, str(REPO / "bench" / "metrics_speed.py"), "--device", "cpu" if dry else "cuda"]
                + ([] if dry else ["--icfg"])]
    if name == "eval":
        return [[py, str(REPO / "bench" / "eval_speed.py"), "--device", "cpu" if dry else "cuda",
                 "--repeat", "1" if dry else "3"] + ([] if dry else ["--icfg"])]
    raise ValueError(name)


def run_stage(name: str, args, out: Path, env: dict) -> dict:
    commands = stage_commands(name, args, out)
    if isinstance(commands, str):
        print(f"[{name}] skipped: {commands}", flush=True)
        return {"stage": name, "status": "skipped", "why": commands}
    start = time.perf_counter()
    status = "ok"
    with open(out / f"{name}.log", "w") as log:
        for cmd in commands:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            try:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                    timeout=args.stage_timeout, start_new_session=False).returncode
            except subprocess.TimeoutExpired:
                log.write(f"\n[device_check] killed after {args.stage_timeout} s\n")
                rc = "timeout"
            if rc != 0:
                status = f"failed (exit {rc})"
                break
    seconds = round(time.perf_counter() - start, 1)
    tail = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
    print(f"[{name}] {status} in {seconds} s" + ("" if status == "ok" else ": " + " | ".join(tail)), flush=True)
    return {"stage": name, "status": status, "seconds": seconds}


def final_line(log: Path, prefix: str) -> str | None:
    """The last line of a log that starts with ``prefix``, with the indented table lines under it
    (the trainer's summary), joined by " | "."""
    if not log.is_file():
        return None
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(prefix)]
    if not starts:
        return None
    block = [lines[starts[-1]].strip()]
    for line in lines[starts[-1] + 1:]:
        if not line.startswith("  "):
            break
        block.append(" ".join(line.split()))
    return " | ".join(block)


def summarise(out: Path, stages: list[dict]) -> dict:
    """Collect the figures and the ratios to the anchor into summary.json / summary.md."""
    summary: dict = {"stages": stages}
    for name in ("anchor", "throughput"):
        path, log = out / f"{name}.json", out / f"{name}.log"
        if path.is_file():
            summary[name] = json.loads(path.read_text())
        elif log.is_file():  # killed part-way: keep the variants it finished (one JSON line each)
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith('{"variant"')]
            summary[name] = {"runs": [json.loads(ln) for ln in lines], "partial": True}
    rows = []
    anchor = {r["variant"]: r["samples_per_s"] for r in summary.get("anchor", {}).get("runs", [])}
    base = anchor.get("seed_literal")
    for source in ("anchor", "throughput"):
        for r in summary.get(source, {}).get("runs", []):
            ratio = f"{r['samples_per_s'] / base:.2f}" if base else "-"
            mfu = r.get("mfu_vs_measured_peak")
            rows.append(f"| {source} | {r['variant']} | {r['samples_per_s']:.0f} | {ratio} | "
                        f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | {r.get('max_mem_gb', float('nan')):.1f} |")
    summary["train_result"] = final_line(out / "train.log", "val (best")
    summary["zero2_result"] = final_line(out / "zero2.log", "val (best")
    summary["clip_result"] = final_line(out / "clip.log", "val (best")
    lines = ["| script | variant | samples/s | × seed-literal | MFU (measured peak) | peak GB |",
             "|---|---|---|---|---|---|", *rows, "",
             "| stage | status | seconds |", "|---|---|---|",
             *[f"| {s['stage']} | {s['status']}{': ' + s['why'] if 'why' in s else ''} | {s.get('seconds', '-')} |"
               for s in stages], "",
             f"default (bf16, 1 GPU): {summary['train_result']}",
             f"ZeRO-2 (1 GPU): {summary['zero2_result']}",
             f"CLIP config, random CLIP ViT-B/16 (1 GPU): {summary['clip_result']}"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder for runs, data cache and installed wheels (default: a new temp dir)")
    parser.add_argument("--wheels", default=str(REPO / ".whl"), help="folder of wheels to install first")
    parser.add_argument("--anchor", default=None, help="path to gpu_anchor.py (shared/bench/gpu_anchor.py)")
    parser.add_argument("--anchor-variants", default="seed_literal,bf16_dynamic,bf16_compile")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in order")
    parser.add_argument("--stage-timeout", type=int, default=300, help="seconds per stage before it is killed")
    parser.add_argument("--dry-run", action="store_true", help="tiny versions of every stage, on the CPU")
    args = parser.parse_args(argv)
    chosen = [s for s in args.stages.split(",") if s]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        print(f"error: --stages: unknown stage {unknown[0]!r} (stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="reid-device-check-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", REID_CACHE=str(args.work / "cache"))
    paths = [str(args.work / "site"), str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    stages = [run_stage(name, args, args.out, env) for name in chosen]
    summary = summarise(args.out, stages)
    print((args.out / "summary.md").read_text(), flush=True)
    failed = [s["stage"] for s in summary["stages"] if s["status"] not in ("ok", "skipped")]
    if failed:
        print(f"device check: {len(failed)} stage(s) failed: {', '.join(failed)} (logs in {args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
