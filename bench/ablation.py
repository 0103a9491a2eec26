"""The clothing-change benchmark: variants x seeds through the real entry points, tables in docs/ablation.md.

    python bench/ablation.py [--config configs/synthetic_cc.yaml] [--seeds 0 1 2]
        [--variants full no_disentangle ...] [--out /tmp/reid-ablation] [--set KEY=VALUE ...]
        [--reevaluate] [--no-train] [--no-doc]

For every (variant, seed) it trains ``accelerate launch launch/train.py --config CONFIG train.seed=S
<overrides>`` (1 process; the dataset's own seed stays fixed; ``--set`` adds overrides of its own to
every run, e.g. ``train.epochs=24``, with an ``--out`` of their own), then evaluates the exported ``best``
model (picked on val by the config's ``eval.select``) on the **test** split with ``accelerate launch
launch/evaluate.py --json``; an ``*_erased`` variant is its base variant's ``best`` with the clothing
eraser fit by ``launch/erase_clothing.py`` (no training), so it pairs with the base weight for weight. A run whose export / JSON exists is not redone (``--reevaluate`` redoes
the evaluations only), so the script can be stopped and restarted, and ``--variants`` / ``--seeds``
extend what is there. It then writes the tables between the ``ablation-table`` markers of
docs/ablation.md with the command, date, machine and commit: each figure is the mean over seeds ±
its standard error (sample standard deviation / sqrt(seeds)); the attribute oracle's ceiling stands
beside every clothing-change figure, and ``% oracle`` is the learned R1 as a share of it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
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
W = "disentangle.loss_weights"
OFF = [f"{W}.cloth=0", f"{W}.cloth_adv=0", f"{W}.cloth_match=0", f"{W}.decouple=0", f"{W}.id_adv=0"]
# The benchmark's ViT after bench/pretrain_perception.py taught it to read every drawn fact on the train
# split, for 30 epochs (the first perceiving encoder) or 100 (it perceives more: docs/ablation.md); and
# a small ResNet taught the same for 60 epochs (it reads hair style barely better than the ViT: docs/ablation.md);
# and the ViT taught on 5,000 *other* synthetic people (seed 1, none of the benchmark's), as a real
# encoder is pretrained on other people's images, for 20 epochs (as many steps as the 100 above); and
# on 10,000 other people for 10 epochs (as many steps again: more people, not more training)
PERCEPTION_VIT = Path("/tmp/reid-perception-vit")
PERCEPTION_VIT_LONG = Path("/tmp/reid-perception-vit-e100")
PERCEPTION_RESNET = Path("/tmp/reid-perception-resnet")
PERCEPTION_VIT_5K = Path("/tmp/reid-perception-vit-n5000")
PERCEPTION_VIT_10K = Path("/tmp/reid-perception-vit-n10000")
PERCEPTION_VIT_5K_WIDE = Path("/tmp/reid-perception-vit128-n5000")  # the same ViT twice as wide (hidden 128)
OTHER_PEOPLE = ["data.synthetic.num_ids=5000", "data.synthetic.seed=1"]
MORE_OTHER_PEOPLE = ["data.synthetic.num_ids=10000", "data.synthetic.seed=1"]
PERCEPTION = {  # encoder directory -> (arch, epochs, overrides of the config: what it learns from)
    PERCEPTION_VIT: ("vit", 30, []), PERCEPTION_VIT_LONG: ("vit", 100, []), PERCEPTION_RESNET: ("resnet", 60, []),
    PERCEPTION_VIT_5K: ("vit", 20, OTHER_PEOPLE), PERCEPTION_VIT_10K: ("vit", 10, MORE_OTHER_PEOPLE),
    PERCEPTION_VIT_5K_WIDE: ("vit", 20, [*OTHER_PEOPLE, "model.image_encoder.hidden=128"])}


def _perceiving(vit: Path) -> list[str]:
    return [f"model.image_encoder.path={vit}", "model.image_encoder.patch_size=0", "model.image_encoder.layers=0"]


PERCEIVING, PERCEIVING_LONG = _perceiving(PERCEPTION_VIT), _perceiving(PERCEPTION_VIT_LONG)
RESNET, PERCEIVING_5K = _perceiving(PERCEPTION_RESNET), _perceiving(PERCEPTION_VIT_5K)
PERCEIVING_10K = _perceiving(PERCEPTION_VIT_10K)
PERCEIVING_5K_WIDE = _perceiving(PERCEPTION_VIT_5K_WIDE)
DETACHED = ["model.cloth_heads=separate", "model.cloth_encoder_grad=false"]
PLAIN = ["data.id_text=full", "eval.standard=full"]
VARIANTS = {  # name -> (overrides of the config, what it tests)
    "full": ([], "the benchmark config: the seven terms"),
    "no_disentangle": (OFF, "`cloth`, `cloth_adv`, `cloth_match`, `decouple`, `id_adv` all 0"),
    "id_adv": ([f"{W}.id_adv=0.2"], "+ the clothing adversary `id_adv` at 0.2"),
    "id_words": ([f"{W}.id_words=1"], "+ `id_words` 1 (the identity features name their identity words)"),
    "separate_heads": (["model.cloth_heads=separate"], "the clothing branch and clothing text on their own heads (`model.cloth_heads: separate`)"),
    "separate_heads_id_words": (["model.cloth_heads=separate", f"{W}.id_words=1"], "`separate_heads` + `id_words` 1"),
    "separate_heads_id_words5": (["model.cloth_heads=separate", f"{W}.id_words=5"], "`separate_heads` + `id_words` 5"),
    "separate_heads_id_words20": (["model.cloth_heads=separate", f"{W}.id_words=20"], "`separate_heads` + `id_words` 20 (about 1/4 per identity word: the term averages over the ~80 words a batch uses)"),
    "separate_heads_wide": (["model.cloth_heads=separate", "model.image_encoder.hidden=128", "model.text_encoder.hidden=128"], "`separate_heads` with encoders twice as wide (hidden 128 for 64)"),
    "perceiving_separate_heads": (["model.cloth_heads=separate", *PERCEIVING], "`separate_heads` from the perceiving ViT (`bench/pretrain_perception.py`)"),
    "perceiving_no_disentangle": ([*OFF, *PERCEIVING], "`no_disentangle` from the perceiving ViT"),
    "perceiving_id_adv": (["model.cloth_heads=separate", f"{W}.id_adv=0.2", *PERCEIVING], "`perceiving_separate_heads` + the clothing adversary `id_adv` 0.2"),
    "perceiving_cloth_detached": (["model.cloth_heads=separate", "model.cloth_encoder_grad=false", *PERCEIVING], "`perceiving_separate_heads` with the clothing branch on the detached [CLS] feature (`model.cloth_encoder_grad: false`)"),
    "perceiving_cloth_detached_id_adv": (["model.cloth_heads=separate", "model.cloth_encoder_grad=false", f"{W}.id_adv=0.2", *PERCEIVING], "`perceiving_cloth_detached` + `id_adv` 0.2"),
    "perceiving_cloth_detached_no_decouple": (["model.cloth_heads=separate", "model.cloth_encoder_grad=false", f"{W}.decouple=0", *PERCEIVING], "`perceiving_cloth_detached` without `decouple`"),
    "perceiving100_no_disentangle": ([*OFF, *PERCEIVING_LONG], "`no_disentangle` from the ViT perceiving after 100 epochs"),
    "perceiving100_cloth_detached": (["model.cloth_heads=separate", "model.cloth_encoder_grad=false", *PERCEIVING_LONG], "`perceiving_cloth_detached` from the ViT perceiving after 100 epochs"),
    "perceiving100_cloth_detached_id_adv": (["model.cloth_heads=separate", "model.cloth_encoder_grad=false", f"{W}.id_adv=0.2", *PERCEIVING_LONG], "`perceiving100_cloth_detached` + `id_adv` 0.2"),
    "perceiving100_cloth_detached_eraser": (["model.cloth_heads=separate", "model.cloth_encoder_grad=false", "model.clothing_eraser.rank=16", *PERCEIVING_LONG], "`perceiving100_cloth_detached` with the clothing eraser (rank 16) refit before every val evaluation in training"),
    "perceiving100_cloth_detached_eraser_e40": (["model.cloth_heads=separate", "model.cloth_encoder_grad=false", "model.clothing_eraser.rank=16", "train.epochs=40", *PERCEIVING_LONG], "`perceiving100_cloth_detached_eraser` trained 40 epochs (24 in the config)"),
    "plain": ([*OFF, *PLAIN], "no disentanglement at all, as IRRA trains: the identity branch on the whole caption, no clothing terms, the standard mode the full caption against the identity embedding"),
    "perceiving100_plain": ([*OFF, *PLAIN, *PERCEIVING_LONG], "`plain` from the ViT perceiving after 100 epochs"),
    "resnet_no_disentangle": ([*OFF, *RESNET], "`no_disentangle` from the perceiving ResNet (`bench/pretrain_perception.py --arch resnet`)"),
    "resnet_cloth_detached": ([*DETACHED, *RESNET], "`perceiving_cloth_detached` from the perceiving ResNet"),
    "resnet_cloth_detached_eraser": ([*DETACHED, "model.clothing_eraser.rank=16", *RESNET], "`resnet_cloth_detached` with the clothing eraser (rank 16) refit before every val evaluation in training"),
    "perceiving5k_no_disentangle": ([*OFF, *PERCEIVING_5K], "`no_disentangle` from the ViT pretrained on 5,000 other people"),
    "perceiving5k_cloth_detached_eraser": ([*DETACHED, "model.clothing_eraser.rank=16", *PERCEIVING_5K], "`perceiving100_cloth_detached_eraser` from the ViT pretrained on 5,000 other people"),
    "perceiving5k_plain": ([*OFF, *PLAIN, *PERCEIVING_5K], "`plain` from the ViT pretrained on 5,000 other people"),
    "perceiving10k_cloth_detached_eraser": ([*DETACHED, "model.clothing_eraser.rank=16", *PERCEIVING_10K], "`perceiving100_cloth_detached_eraser` from the ViT pretrained on 10,000 other people"),
    "perceiving10k_plain": ([*OFF, *PLAIN, *PERCEIVING_10K], "`plain` from the ViT pretrained on 10,000 other people"),
    "perceiving5k_wide_cloth_detached_eraser": ([*DETACHED, "model.clothing_eraser.rank=16", *PERCEIVING_5K_WIDE], "`perceiving5k_cloth_detached_eraser` from the ViT twice as wide (hidden 128) pretrained on 5,000 other people"),
    "perceiving5k_wide_no_disentangle": ([*OFF, *PERCEIVING_5K_WIDE], "`no_disentangle` from the ViT twice as wide pretrained on 5,000 other people"),
    "perceiving5k_wide_cloth_detached_eraser_no_decouple": ([*DETACHED, f"{W}.decouple=0", "model.clothing_eraser.rank=16", *PERCEIVING_5K_WIDE], "`perceiving5k_wide_cloth_detached_eraser` without `decouple` (does it cost hair style?)"),
    "perceiving5k_wide_cloth_detached_eraser_frozen": ([*DETACHED, "model.clothing_eraser.rank=16", "model.image_encoder.frozen=true", *PERCEIVING_5K_WIDE], "`perceiving5k_wide_cloth_detached_eraser` with the image encoder frozen (`model.image_encoder.frozen`: only the heads and the text encoder train, as LiT locks a pretrained image tower)"),
    "perceiving5k_wide_cloth_detached_eraser32_frozen": ([*DETACHED, "model.clothing_eraser.rank=32", "model.image_encoder.frozen=true", *PERCEIVING_5K_WIDE], "`perceiving5k_wide_cloth_detached_eraser_frozen` with a rank-32 eraser refit before every val evaluation in training (the post-hoc rank 32 met the leak target on the mean only)"),
    "perceiving5k_wide_plain_frozen": ([*OFF, *PLAIN, "model.image_encoder.frozen=true", *PERCEIVING_5K_WIDE], "`perceiving5k_wide_plain` with the image encoder frozen: no disentanglement as the issue ran it, from the method's frozen encoder"),
    "perceiving5k_wide_no_disentangle_frozen": ([*OFF, "model.image_encoder.frozen=true", *PERCEIVING_5K_WIDE], "`perceiving5k_wide_no_disentangle` with the image encoder frozen"),
    "perceiving5k_wide_plain": ([*OFF, *PLAIN, *PERCEIVING_5K_WIDE], "`plain` from the ViT twice as wide pretrained on 5,000 other people"),
    "perceiving10k_cloth_detached_eraser_image_lr": ([*DETACHED, "model.clothing_eraser.rank=16", "optim.image_lr=1e-4", *PERCEIVING_10K], "`perceiving10k_cloth_detached_eraser` with the pretrained image encoder at a tenth of the learning rate (`optim.image_lr` 1e-4)"),
    "separate_heads_cloth_detached": (["model.cloth_heads=separate", "model.cloth_encoder_grad=false"], "`separate_heads` with the clothing branch on the detached [CLS] feature, from scratch"),
    "perceiving_full": (PERCEIVING, "`full` (shared heads) from the perceiving ViT"),
    "separate_heads_similar": (["model.cloth_heads=separate", "data.sampler=similar"], "`separate_heads` + P x K batches of people with similar identity descriptions"),
    "id_text_full": (["data.id_text=full"], "the identity branch trained on the whole caption"),
    "no_cls_bio": ([f"{W}.cls=0", f"{W}.bio=0"], "without `cls` and `bio`"),
    "seed_info_nce": (["disentangle.info_nce.same_person=negative"], "the seed's InfoNCE (same-person keys as negatives)"),
    "decouple_seed": (["disentangle.decouple.form=seed"], "seed-form (projector \\|cos\\|) `decouple`"),
    "grl_cloth_branch": (["disentangle.grl=cloth_branch"], "GRL on the whole cloth branch (the seed)"),
    "fusion": ([f"{W}.fusion_match=0.5"], "+ `fusion_match` 0.5 (trains the fusion head; nothing ranks with it)"),
    "similar_batches": (["data.sampler=similar"], "P x K batches of people with similar identity descriptions"),
}
# Variants that add the clothing eraser to another variant's trained `best` (launch/erase_clothing.py,
# no training: paired with the base run weight for weight): name -> (base variant, rank, overrides)
ERASED = {f"{base}_erased": (base, 16, []) for base in (
    "separate_heads", "perceiving_no_disentangle", "perceiving_cloth_detached",
    "perceiving100_no_disentangle", "perceiving100_cloth_detached", "resnet_no_disentangle", "resnet_cloth_detached",
    "perceiving5k_wide_no_disentangle")}
ERASED.update({f"perceiving100_cloth_detached_erased{rank}": ("perceiving100_cloth_detached", rank, []) for rank in (8, 32)})
ERASED.update({f"perceiving5k_wide_cloth_detached_eraser_erased{rank}": ("perceiving5k_wide_cloth_detached_eraser", rank, [])
               for rank in (0, 8, 16)})  # 0: its weights without the eraser; 16: its own eraser refit (a control)
ERASED["perceiving5k_wide_no_disentangle_erased8"] = ("perceiving5k_wide_no_disentangle", 8, [])
ERASED.update({f"perceiving5k_wide_cloth_detached_eraser_protect{keep}": (
    "perceiving5k_wide_cloth_detached_eraser", 16, [f"model.clothing_eraser.protect={keep}"]) for keep in (32, 64, 128)})
ERASED.update({f"perceiving5k_wide_cloth_detached_eraser_frozen_erased{rank}": ("perceiving5k_wide_cloth_detached_eraser_frozen", rank, [])
               for rank in (0, 24, 32)})
ERASED["perceiving100_cloth_detached_erased_words"] = (
    "perceiving100_cloth_detached", 16, ["model.clothing_eraser.given_identity_text=false"])
for _name, (_base, _rank, _over) in ERASED.items():
    VARIANTS[_name] = (_over, f"`{_base}` with the clothing eraser (rank {_rank}{', ' + ' '.join(_over) if _over else ''}) "
                              "fit to its `best` by launch/erase_clothing.py")
LAUNCH = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def accelerate(args: list[str], log: Path) -> None:
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", *LAUNCH, *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}; see {log}")


def pretrain_once(encoder: Path, command: list[str], what: str) -> bool:
    """Run ``command`` to save an encoder into ``encoder`` unless one is there (its config.json): under
    a lock file beside it, so that drivers started side by side (one per seed) train it once and the
    others wait for it. False when the command failed."""
    encoder.parent.mkdir(parents=True, exist_ok=True)
    with open(encoder.with_name(encoder.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another bench/ablation.py that is training {encoder}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (encoder / "config.json").is_file():
            return True
        print(f"training {what} into {encoder}", flush=True)
        return subprocess.run(command).returncode == 0


def run_one(out: Path, config: Path, variant: str, seed: int, reevaluate: bool, extra: list[str]) -> dict:
    name = f"{variant}-s{seed}"
    best = out / "runs" / name / "best"
    if variant in ERASED and not (best / "reid_model.json").is_file():
        base, rank, overrides = ERASED[variant]
        run_one(out, config, base, seed, False, extra)  # trains and evaluates the base run where it is missing
        accelerate(["launch/erase_clothing.py", "--checkpoint", str(out / "runs" / f"{base}-s{seed}" / "best"),
                    "--out", str(best), "--rank", str(rank), *overrides], out / "logs" / f"{name}.erase.log")
    elif not (best / "reid_model.json").is_file():
        start = time.time()
        accelerate(["launch/train.py", "--config", str(config), f"train.output_dir={out / 'runs'}",
                    f"train.run_name={name}", f"train.seed={seed}", "train.progress=false", *VARIANTS[variant][0], *extra],
                   out / "logs" / f"{name}.train.log")
        (out / "runs" / name / "train_seconds.txt").write_text(f"{time.time() - start:.0f}\n")
        print(f"{name}: trained in {time.time() - start:.0f} s", flush=True)
    result = out / "eval" / f"{name}.json"
    if reevaluate or not result.is_file():
        accelerate(["launch/evaluate.py", "--checkpoint", str(best), "--split", "test", "--json", str(result)],
                   out / "logs" / f"{name}.eval.log")
    report = json.loads(result.read_text())
    seconds = out / "runs" / name / "train_seconds.txt"
    report["train_seconds"] = float(seconds.read_text()) if seconds.is_file() else None
    return report


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

CC, STD = "clothing_change", "standard"


def _get(report: dict, *path: str) -> float | None:
    for key in path:
        if not isinstance(report, dict) or key not in report:
            return None
        report = report[key]
    return float(report)


def _share(report: dict, protocol: str, mode: str) -> float | None:
    r1, oracle = _get(report, "retrieval", protocol, mode, "R1"), _get(report, "retrieval", protocol, "oracle", "R1")
    return None if r1 is None or not oracle else 100.0 * r1 / oracle


def _cell(values: list[float | None], digits: int = 1) -> str:
    """Mean ± standard error over seeds (the mean alone for one seed)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) / math.sqrt(len(values)):.{digits}f}"


RETRIEVAL = [  # header, function of one report
    ("CC R1, clothing-invariant", lambda r: _get(r, "retrieval", CC, "clothing_invariant", "R1")),
    ("% of oracle", lambda r: _share(r, CC, "clothing_invariant")),
    ("CC mAP, clothing-invariant", lambda r: _get(r, "retrieval", CC, "clothing_invariant", "mAP")),
    ("CC R1, standard", lambda r: _get(r, "retrieval", CC, "standard", "R1")),
    ("std R1, standard", lambda r: _get(r, "retrieval", STD, "standard", "R1")),
    ("std mAP, standard", lambda r: _get(r, "retrieval", STD, "standard", "mAP")),
    ("std R1, clothing-invariant", lambda r: _get(r, "retrieval", STD, "clothing_invariant", "R1")),
    ("CC R1, perceived-fact ranker", lambda r: _get(r, "disentangle", "perceived", CC, "R1")),
    ("train min", lambda r: None if r.get("train_seconds") is None else r["train_seconds"] / 60),
]
FACTORS = ("gender", "age", "height", "build", "skin", "hair_style", "hair_colour")
PROBES = [("identity → upper colour", "identity_to_upper_colour")] + [
    (f"identity → {f.replace('_', ' ')}", f"identity_to_{f}") for f in FACTORS] + [
    ("cloth → person", "cloth_to_person")]


def _table(results: dict[str, list[dict]], columns: list) -> list[str]:
    lines = ["| variant | seeds | " + " | ".join(h for h, _ in columns) + " |", "|---|---|" + "---|" * len(columns)]
    for variant, reports in results.items():
        lines.append(f"| {variant} | {len(reports)} | " + " | ".join(_cell([fn(r) for r in reports]) for _, fn in columns) + " |")
    return lines


TEXT_PROBES = [(f"text → {f.replace('_', ' ')}", f"text_to_{f}") for f in FACTORS]


def _probe_columns(probes: list = PROBES) -> list:
    return [(label, lambda r, key=key: _get(r, "disentangle", "probes", key, "accuracy")) for label, key in probes]


def _oracle_line(results: dict[str, list[dict]]) -> str:
    reports = [r for rs in results.values() for r in rs]
    cc = _cell([_get(r, "retrieval", CC, "oracle", "R1") for r in reports])
    std = _cell([_get(r, "retrieval", STD, "oracle", "R1") for r in reports])
    queries = reports[0]["num_queries"]
    return (f"Attribute-oracle ceiling (ranks by the ground-truth identity facts each caption names, random "
            f"tie-break, mean of 10 draws): clothing-change R1 {cc}, standard R1 {std}. One seed's R1 on "
            f"{queries} queries has a binomial standard error of at most {100 * 0.5 / math.sqrt(queries):.1f} points.")


def write_tables(results: dict[str, list[dict]], command: str, config: Path) -> None:
    first = next(iter(next(iter(results.values()))))
    probes = first.get("disentangle", {}).get("probes", {})
    chance = ", ".join(f"{label.split('→ ')[1]} {probes[key]['chance']:.1f}" for label, key in PROBES if key in probes)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    lines = [START, "",
             f"Made by `{command}` on {time.strftime('%Y-%m-%d')} (commit {commit or '?'}), {platform.machine()} CPU, "
             f"{os.cpu_count()} cores shared with other jobs, torch {__import__('torch').__version__}; config "
             f"`{config.relative_to(REPO) if config.is_relative_to(REPO) else config}`; test split of "
             f"`{first['root']}` ({first['num_gallery']} images, {first['num_queries']} queries); model = the `best` "
             "export; mean ± standard error over the seeds (`train.seed`; the dataset is fixed).", "",
             _oracle_line(results), "", "Retrieval (CC = clothing-change protocol, std = standard protocol):", ""]
    lines += _table(results, RETRIEVAL)
    lines += ["", f"Linear probes on the test images (fit on the train images; chance: {chance}):", ""]
    lines += _table(results, _probe_columns())
    with_text = {v: rs for v, rs in results.items() if any("text_to_gender" in r.get("disentangle", {}).get("probes", {}) for r in rs)}
    if with_text:
        lines += ["", "The same identity facts probed on the identity **text** embedding of the test captions (fit on the "
                  "train captions' identity parts): what the text side reads, so what an image side could be matched on. "
                  "Seeds: those whose evaluation has these probes.", ""]
        lines += _table({v: [r for r in rs if "text_to_gender" in r["disentangle"]["probes"]] for v, rs in with_text.items()},
                        _probe_columns(TEXT_PROBES))
    lines += ["", "Variants: " + "; ".join(f"`{v}` = {VARIANTS[v][1]} (`{' '.join(VARIANTS[v][0]) or 'no overrides'}`)"
                                          for v in results), "", END]
    text = DOC.read_text() if DOC.is_file() else f"# Ablation\n\n{START}\n{END}\n"
    if START not in text:
        text += f"\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    DOC.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "synthetic_cc.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["full", "no_disentangle", "id_text_full"], choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/reid-ablation"), help="runs, logs, eval JSONs")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="extra",
                        help="overrides for every training run, after the variant's (give them an --out of their own)")
    parser.add_argument("--reevaluate", action="store_true", help="redo the evaluations of existing runs")
    parser.add_argument("--no-train", action="store_true", help="only tabulate the runs that exist")
    parser.add_argument("--no-doc", action="store_true", help="leave docs/ablation.md alone (runs and results.json only)")
    args = parser.parse_args()
    config = args.config.resolve()
    if not config.is_file():
        print(f"error: --config: {args.config} does not exist", file=sys.stderr)
        return 2
    for encoder, (arch, epochs, overrides) in PERCEPTION.items():
        if args.no_train or not any(_perceiving(encoder)[0] in VARIANTS[v][0] for v in args.variants):
            continue
        argv = ["--arch", arch, "--epochs", str(epochs), "--out", str(encoder), *overrides]
        pretrain = [sys.executable, str(REPO / "bench" / "pretrain_perception.py"), "--config", str(config), *argv]
        if not pretrain_once(encoder, pretrain, f"the perceiving {arch} (bench/pretrain_perception.py "
                                               f"{shlex.join(argv)}; 6 to 30 min on 2 cores)"):
            print("error: bench/pretrain_perception.py failed (its output is above)", file=sys.stderr)
            return 2
    command = "python bench/ablation.py " + shlex.join(sys.argv[1:])
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:  # seed-major: a stopped script leaves every variant with the same seeds
        for variant in args.variants:
            if args.no_train and not (args.out / "runs" / f"{variant}-s{seed}" / "best").is_dir():
                continue
            results.setdefault(variant, []).append(run_one(args.out, config, variant, seed, args.reevaluate, args.extra))
    results = {v: results[v] for v in args.variants if v in results}
    if not results:
        print("error: no runs to tabulate", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if args.no_doc:
        print(f"wrote {args.out / 'results.json'}")
        return 0
    write_tables(results, command, config)
    print(f"wrote {DOC.relative_to(REPO)} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
