"""Ablation of the disentanglement terms on the synthetic default, through the real entry points.

    python bench/ablation.py [--seeds 42 43] [--variants full no_decouple ...] [--out /tmp/reid-ablation]

For every (variant, seed) it trains ``accelerate launch launch/train.py train.seed=S <overrides>``
(1 process, configs/synthetic.yaml, the synthetic dataset's own seed fixed), then evaluates the
exported ``best`` model (selected on val R1) on the test split with ``accelerate launch
launch/evaluate.py --json``. A run whose export / JSON already exists is not redone (``--reevaluate``
redoes the evaluations only), so the script can be stopped and restarted. Finally it writes the
tables into docs/ablation.md between the ``ablation-table`` markers, with the command, date and
machine; numbers are mean ± half the range over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "ablation.md"
START, END = "<!-- ablation-table:start -->", "<!-- ablation-table:end -->"
RERANK_TOPK = 10
W = "disentangle.loss_weights"
VARIANTS = {  # name -> (overrides of configs/synthetic.yaml, what it tests)
    "full": ([], "the synthetic default (xcorr decouple 0.3, GRL on the adversary, all seven terms)"),
    "no_decouple": ([f"{W}.decouple=0"], "without `decouple`"),
    "decouple_seed": (["disentangle.decouple.form=seed"], "seed-form (projector \\|cos\\|) `decouple`"),
    "decouple_x1": ([f"{W}.decouple=1"], "xcorr `decouple` at weight 1"),
    "decouple_x3": ([f"{W}.decouple=3"], "xcorr `decouple` at weight 3"),
    "grl_cloth_branch": (["disentangle.grl=cloth_branch"], "GRL on the whole cloth branch (the seed)"),
    "no_cloth_match": ([f"{W}.cloth_match=0"], "without `cloth_match`"),
    "no_cloth_adv": ([f"{W}.cloth_adv=0"], "without `cloth_adv`"),
    "fusion": ([f"{W}.fusion_match=0.5"], "+ `fusion_match` 0.5 (the re-ranking head)"),
    "id_text_id": (["data.id_text=id"], "the identity branch trained on the identity part of the caption"),
}
LAUNCH = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def accelerate(args: list[str], log: Path) -> None:
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", *LAUNCH, *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}; see {log}")


def run_one(out: Path, variant: str, seed: int, reevaluate: bool) -> dict:
    name = f"{variant}-s{seed}"
    best = out / "runs" / name / "best"
    if not (best / "reid_model.json").is_file():
        start = time.time()
        overrides = VARIANTS[variant][0]
        accelerate(["launch/train.py", f"train.output_dir={out / 'runs'}", f"train.run_name={name}",
                    f"train.seed={seed}", "train.progress=false", *overrides], out / "logs" / f"{name}.train.log")
        print(f"{name}: trained in {time.time() - start:.0f} s", flush=True)
    result = out / "eval" / f"{name}.json"
    if reevaluate or not result.is_file():
        extra = ["--rerank-topk", str(RERANK_TOPK)] if variant == "fusion" else []
        accelerate(["launch/evaluate.py", "--checkpoint", str(best), "--split", "test", "--json", str(result), *extra],
                   out / "logs" / f"{name}.eval.log")
    report = json.loads(result.read_text())
    report["val_best_R1"] = _val_best_r1(out / "runs" / name)
    return report


def _val_best_r1(run: Path) -> float:
    """The best val R1 the trainer logged (log.jsonl rows of kind "val"): the one `best` was saved at."""
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return max(row["val/R1"] for row in rows if row.get("kind") == "val")


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

COLUMNS = [  # header, path into the report
    ("val R1", ("val_best_R1",)),
    ("std R1", ("retrieval", "standard", "full", "R1")),
    ("std mAP", ("retrieval", "standard", "full", "mAP")),
    ("CC R1", ("retrieval", "clothing_change", "full", "R1")),
    ("CC mAP", ("retrieval", "clothing_change", "full", "mAP")),
    ("id→upper colour", ("disentangle", "probes", "id_to_upper_colour", "accuracy")),
    ("cloth→person", ("disentangle", "probes", "cloth_to_person", "accuracy")),
    ("\\|cos(id, cloth)\\|", ("disentangle", "mean_abs_cos_id_cloth")),
]
SECOND = [
    ("std R1, id-part query", ("retrieval", "standard", "id", "R1")),
    ("CC R1, id-part query", ("retrieval", "clothing_change", "id", "R1")),
    ("CC mAP, id-part query", ("retrieval", "clothing_change", "id", "mAP")),
    ("id→person (ref.)", ("disentangle", "probes", "id_to_person", "accuracy")),
    ("cloth→upper colour (ref.)", ("disentangle", "probes", "cloth_to_upper_colour", "accuracy")),
]
CHANCE = [("id_to_upper_colour", "upper colour"), ("cloth_to_person", "person")]


def _get(report: dict, path: tuple) -> float | None:
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return float(report)


def _cell(values: list[float | None], digits: int) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"


def _table(results: dict[str, list[dict]], columns: list) -> list[str]:
    lines = ["| variant | seeds | " + " | ".join(h for h, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for variant, reports in results.items():
        cells = [_cell([_get(r, path) for r in reports], 3 if "cos" in header else 1) for header, path in columns]
        lines.append(f"| {variant} | {len(reports)} | " + " | ".join(cells) + " |")
    return lines


def _rerank_table(reports: list[dict]) -> list[str]:
    lines = ["| protocol, query | R1 | mAP | R1 re-ranked | mAP re-ranked |", "|---|---|---|---|---|"]
    for protocol in ("standard", "clothing_change"):
        for q in ("full", "id"):
            plain = [_get(r, ("retrieval", protocol, q, m)) for r in reports for m in ("R1", "mAP")]
            again = [_get(r, ("reranked", protocol, q, m)) for r in reports for m in ("R1", "mAP")]
            lines.append(f"| {protocol}, {q} | {_cell(plain[0::2], 1)} | {_cell(plain[1::2], 1)} | "
                         f"{_cell(again[0::2], 1)} | {_cell(again[1::2], 1)} |")
    seconds = [r["reranked"]["seconds"] / r["reranked"]["pairs"] * RERANK_TOPK * 1000 for r in reports if "reranked" in r]
    encode = [r["seconds"]["encode"] / (r["num_gallery"] + 2 * r["num_queries"]) * 1000 for r in reports]
    lines.append("")
    lines.append(f"Re-ranking cost (CPU, this machine): {_cell(seconds, 2)} ms per query for k = {RERANK_TOPK} "
                 f"(candidate search + {RERANK_TOPK} fusion-head pairs + re-sort), against "
                 f"{_cell(encode, 2)} ms to encode one gallery image or caption.")
    return lines


def write_tables(results: dict[str, list[dict]], command: str) -> None:
    first = next(iter(next(iter(results.values()))))
    chance = {label: _cell([_get(r, ("disentangle", "probes", key, "chance")) for rs in results.values() for r in rs], 1)
              for key, label in CHANCE}
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    lines = [START, "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')} (commit {commit}, on top of the working tree), "
             f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs, torch "
             f"{__import__('torch').__version__}; test split of {first['dataset']} at `{first['root']}` "
             f"({first['num_gallery']} images, {first['num_queries']} queries), model = the `best` export "
             "(val R1). Mean ± half the range over the seeds (`train.seed`; the dataset seed is fixed).", "",
             "Probe chance levels (majority class of the scored set): "
             + ", ".join(f"{k} {v}" for k, v in chance.items()) + ".", ""]
    lines += _table(results, COLUMNS) + ["", "Identity-part queries and the reference probes:", ""]
    lines += _table(results, SECOND)
    if "fusion" in results:
        lines += ["", f"Fusion re-ranking (variant `fusion`, top {RERANK_TOPK}):", ""] + _rerank_table(results["fusion"])
    lines += ["", "Variants: " + "; ".join(f"`{v}` = {VARIANTS[v][1]} (`{' '.join(VARIANTS[v][0]) or 'no overrides'}`)"
                                          for v in results), "", END]
    text = DOC.read_text() if DOC.is_file() else f"# Ablation\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    DOC.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/reid-ablation"), help="runs, logs, eval JSONs")
    parser.add_argument("--reevaluate", action="store_true", help="redo the evaluations of existing runs")
    parser.add_argument("--no-train", action="store_true", help="only tabulate the runs that exist")
    args = parser.parse_args()
    command = "python bench/ablation.py " + shlex.join(sys.argv[1:])
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:  # seed-major: a stopped script leaves every variant with the same seeds
        for variant in args.variants:
            if args.no_train and not (args.out / "runs" / f"{variant}-s{seed}" / "best").is_dir():
                continue
            results.setdefault(variant, []).append(run_one(args.out, variant, seed, args.reevaluate))
    results = {v: results[v] for v in args.variants if v in results}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    write_tables(results, command)
    print(f"wrote {DOC.relative_to(REPO)} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
