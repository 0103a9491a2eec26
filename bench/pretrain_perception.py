"""Give the benchmark's tiny ViT the perception a pretrained encoder brings to real data.

    python bench/pretrain_perception.py [--config configs/synthetic_cc.yaml] [--epochs 30]
        [--arch vit|resnet|convnext] [--out /tmp/reid-perception-vit] [--device auto|cpu|cuda]
        [--ranker-only] [key=value ...]

On CUHK-PEDES the image encoder starts from weights (ViT, CLIP) that already see people: gender,
build, hair, garments. The clothing-change benchmark's from-scratch 64-d ViT never learns the shape
facts (gender, build, hair style) from the retrieval objectives (docs/ablation.md), so the benchmark
measured its perception more than the disentanglement. This script trains the *same* encoder
(``model.image_encoder`` of the config) to read every drawn fact, identity **and** clothing alike,
from the **train** split's images (ground truth from ``synth_factors.json``; val and test people are
never seen), with the training augmentation, and saves it as a local ViT directory
(``config.json`` + ``model.safetensors``) that ``model.image_encoder.path=`` loads. It prints, and
writes to ``perception.json``, the accuracy of each fact on the **val** split's images beside its
chance rate: how well this encoder can perceive each fact at all when asked directly. More epochs
perceive more (``--epochs 100``: gender 84.6 and hair style 57.5 against 77.6 and 49.8 after 30;
docs/ablation.md); ``bench/fact_visibility.py`` asks a small CNN the same, to tell what the pixels
show from what this ViT learns.

More *people* perceive more still. ``data.synthetic.num_ids=5000 data.synthetic.seed=1`` teaches it
on 5,000 other synthetic people (a separate dataset, generated into the cache: none of the
benchmark's people), as a real encoder is pretrained on other people's images; the val accuracies
and the ranker are then that dataset's, and ``--ranker-only`` without the overrides measures the
ranker on the benchmark's test split, and prints its linear probes' accuracy on the test images
(fit on the train images: the evaluation's ``identity → fact`` protocol, on the frozen feature).
``--epochs 20`` (as many steps as 100 epochs on the benchmark's 700 train people, 21 min on 2
cores): hair style 69.8 (chance 41.6), gender 92.9, build 92.3 on its val images; on the
benchmark's test split the perceived-fact ranker reaches clothing-change R1 81.0 (the 100-epoch
encoder's: 65.4; the oracle 93.2), and the probes read hair style 66.3 (chance 44.5), gender 91.1,
build 92.2: a model fine-tuned from it keeps about that (its identity embedding: hair style 65.1).
``data.synthetic.num_ids=10000 --epochs 10`` (the same steps over twice the people): on its own val
images the same (hair style 69.7), on the benchmark's test split more (hair style 69.1, ranker 86.3).
``--device`` trains on a GPU where there is one (``auto``).

``--arch resnet`` trains a small Hugging Face ResNet (:func:`small_resnet`) instead, saved as a
``resnet`` directory that the model loads as it loads microsoft/resnet-50. Measured: after 60
epochs it reads hair style at 61.6 (the ViT after 100: 57.5; a small CNN without the ResNet stem's
stride 4: 75.7), so it is no better a stand-in for a pretrained encoder (docs/ablation.md).
``--arch convnext`` trains a small ConvNeXt with 2×2 patches (:func:`small_convnext`), which keeps
that detail but learns slowly on a CPU (20 epochs: still at chance on hair style).

The encoder learns clothing as well as identity, as a pretrained one does: which of the two the
identity embedding then keeps is left to the model's objectives.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reid.config import EncoderConfig, load_config  # noqa: E402
from reid.data import prepare_root  # noqa: E402
from reid.data.transforms import EvalTransform, TrainTransform, load_image  # noqa: E402
from reid.model.encoders import build_image_encoder, feature_width, image_features  # noqa: E402
from reid.oracle import identity_values  # noqa: E402

IDENTITY = ("gender", "age", "height", "build", "skin", "hair_style", "hair_colour", "beard")
CLOTHING = ("upper_type", "upper_colour", "lower_type", "lower_colour")
MEAN = STD = 0.5  # the trainer's pixel statistics for an encoder directory without preprocessor_config.json


def _text_width(cfg) -> int:
    """The config's text encoder width, which the small CNNs' last stages take."""
    from reid.model.encoders import preset_sizes

    return cfg.model.text_encoder.hidden or preset_sizes(cfg.model.text_encoder, "model.text_encoder").hidden


def small_resnet(cfg) -> torch.nn.Module:
    """A Hugging Face ``ResNetModel`` of ResNet-18's shape at a fraction of its width (stem 32,
    stages 32/64/W/W of two basic blocks, W the text encoder's width): a convolutional encoder,
    translation-invariant, that the model loads from a directory as it loads microsoft/resnet-50."""
    from transformers import ResNetConfig, ResNetModel

    width = _text_width(cfg)
    config = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, width, width], depths=[2, 2, 2, 2], layer_type="basic")
    return ResNetModel(config)


def small_convnext(cfg) -> torch.nn.Module:
    """A Hugging Face ``ConvNextModel`` with a gentle stem (2×2 patches, where ConvNeXt-T uses 4×4 and
    the ResNet a stride-4 stem), stages 32/64/W/W of 1/1/2/1 blocks: fine detail such as hair style
    survives the first layer."""
    from transformers import ConvNextConfig, ConvNextModel

    width = _text_width(cfg)
    config = ConvNextConfig(patch_size=2, num_stages=4, hidden_sizes=[32, 64, width, width], depths=[1, 1, 2, 1])
    return ConvNextModel(config)


ARCHS = {"resnet": small_resnet, "convnext": small_convnext}


def labels(entry: dict) -> dict[str, str]:
    out = {k: v for k, v in identity_values(entry).items() if k in IDENTITY}
    out.update({k: str(entry["clothing"][k]) for k in CLOTHING})
    return out


def load_split(root: Path, factors: dict, split: str) -> tuple[list[Image.Image], list[dict]]:
    paths = sorted(p for p, e in factors.items() if e["split"] == split)
    return [load_image(root / "imgs" / p) for p in paths], [labels(factors[p]) for p in paths]


def val_table(predicted: dict[str, list[int]], classes: dict[str, list[str]], val_y: list[dict]) -> dict:
    """``{fact: {accuracy, chance}}`` (percent, chance = the majority value's share) of class indices
    ``predicted`` per fact on the val images, each printed as one line."""
    table = {}
    for f, rows in predicted.items():
        table[f] = accuracy_and_chance([classes[f][p] for p in rows], [y[f] for y in val_y])
        print(f"{f:13s} val accuracy {table[f]['accuracy']:5.1f}  chance {table[f]['chance']:5.1f}")
    return table


def accuracy_and_chance(predicted: list[str], truth: list[str]) -> dict[str, float]:
    """Percent right, and the majority value's share of ``truth`` (rounded to 0.1)."""
    accuracy = 100.0 * sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    chance = 100.0 * max(truth.count(v) for v in set(truth)) / len(truth)
    return {"accuracy": round(accuracy, 1), "chance": round(chance, 1)}


@torch.no_grad()
def features(encoder: torch.nn.Module, images: list[Image.Image], plain: EvalTransform) -> torch.Tensor:
    """(N, H) features (the ViT's [CLS], the ResNet's pool) of the eval-transformed images, on the CPU
    (computed on the encoder's device)."""
    device = next(encoder.parameters()).device
    return torch.cat([image_features(encoder, torch.stack([plain(img) for img in images[i:i + 256]]).to(device)).cpu()
                      for i in range(0, len(images), 256)])


def perceived_ranker(encoder: torch.nn.Module, root: Path, factors: dict, train_x: list[Image.Image],
                     plain: EvalTransform) -> tuple[dict, dict]:
    """The perceived-fact ranker (reid.oracle) on this encoder's [CLS] feature, on the **test** split
    (each caption a query, every test image the gallery; probes fit on the train images), beside
    the attribute oracle: how far an attribute ranker gets on what the encoder perceives. And those
    probes' accuracy on the test images, fact by fact: the protocol of the evaluation's
    ``identity → fact`` probes, on the frozen feature (what a model fine-tuned from this encoder
    starts from)."""
    from reid.disentangle_eval import outfit_ids, perceived_log_probs, perceived_ranker as ranker
    from reid.oracle import oracle_metrics

    encoder.eval()
    train_paths = sorted(p for p, e in factors.items() if e["split"] == "train")
    paths = sorted(p for p, e in factors.items() if e["split"] == "test")
    if not paths:
        return {}, {}  # a dataset without a test split: nothing to rank
    queries = [p for p in paths for _ in factors[p]["caption_facts"]]  # every caption of every test image
    pids = torch.tensor([int(factors[p]["id"]) for p in paths])
    q_pids = torch.tensor([int(factors[p]["id"]) for p in queries])
    protocols = {"standard": (None, None), "clothing_change": (outfit_ids(factors, queries), outfit_ids(factors, paths))}
    gallery = features(encoder, [load_image(root / "imgs" / p) for p in paths], plain)
    log_probs = perceived_log_probs(features(encoder, train_x, plain), train_paths, gallery, factors)
    out = ranker(log_probs, paths, queries, q_pids, pids, factors, protocols)
    oracle = {name: oracle_metrics(factors, queries, paths, q_pids, pids, query_groups=qg, gallery_groups=gg)
              for name, (qg, gg) in protocols.items()}
    probes = {fact: accuracy_and_chance([classes[i] for i in scores.argmax(1).tolist()],
                                        [identity_values(factors[p])[fact] for p in paths])
              for fact, (classes, scores) in log_probs.items()}
    return ({name: {"R1": round(m["R1"], 1), "mAP": round(m["mAP"], 1), "oracle_R1": round(oracle[name]["R1"], 1)}
             for name, m in out.items()}, probes)


def print_ranker(result: dict, probes: dict) -> None:
    for fact, m in probes.items():
        print(f"{fact:13s} test accuracy {m['accuracy']:5.1f}  chance {m['chance']:5.1f}  (linear probe on the frozen "
              "feature, fit on the train images)")
    for name, m in result.items():
        print(f"perceived-fact ranker on the test split, {name} protocol: R1 {m['R1']:.1f}, mAP {m['mAP']:.1f} "
              f"(attribute oracle R1 {m['oracle_R1']:.1f})")


def ranker_only(out: Path, cfg, root: Path, factors: dict, train_x: list[Image.Image], device: torch.device) -> int:
    """Measure the perceived-fact ranker of the encoder saved in ``out``; add it to its perception.json."""
    if not (out / "config.json").is_file():
        print(f"error: {out}: no saved encoder (config.json); train one first (without --ranker-only)", file=sys.stderr)
        return 2
    if not train_x or not any(e["split"] == "test" for e in factors.values()):
        print(f"error: {root}: the ranker needs train images (to fit its probes) and test images, found "
              f"{len(train_x)} train", file=sys.stderr)
        return 2
    size = tuple(cfg.data.image_size)
    encoder = build_image_encoder(EncoderConfig(path=str(out)), size).to(device)  # the trainer's strict loading
    plain = EvalTransform(size, [MEAN] * 3, [STD] * 3)
    result, probes = perceived_ranker(encoder, root, factors, train_x, plain)
    print_ranker(result, probes)
    report_path = out / "perception.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report["perceived_ranker"], report["test_probes"] = result, probes
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "synthetic_cc.yaml")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arch", choices=("vit", *ARCHS), default="vit",
                        help="vit: the config's model.image_encoder; resnet / convnext: a small Hugging Face "
                             "ResNet (small_resnet) or ConvNeXt (small_convnext), its feature as wide as the "
                             "config's text encoder")
    parser.add_argument("--out", type=Path, default=Path("/tmp/reid-perception-vit"))
    parser.add_argument("--device", default="auto",
                        help="auto (cuda when there is one, else cpu), cpu, cuda, cuda:N: where the encoder trains")
    parser.add_argument("--ranker-only", action="store_true",
                        help="do not train: load the encoder saved in --out and measure its perceived-fact ranker")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config, e.g. data.root=DIR")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    try:
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("this torch sees no CUDA device")
    except RuntimeError as err:
        print(f"error: --device {args.device}: {err}", file=sys.stderr)
        return 2
    root = Path(prepare_root(cfg.data))
    if not (root / "synth_factors.json").is_file():
        print(f"error: {root}: no synth_factors.json; the facts to learn come from a reid-synth dataset", file=sys.stderr)
        return 2
    factors = json.loads((root / "synth_factors.json").read_text())
    size = tuple(cfg.data.image_size)
    train_x, train_y = load_split(root, factors, "train")
    if args.ranker_only:
        return ranker_only(args.out, cfg, root, factors, train_x, device)
    val_x, val_y = load_split(root, factors, "val")
    if len(train_x) < args.batch_size or not len(val_x):
        print(f"error: {root}: {len(train_x)} train and {len(val_x)} val images; needs a batch ({args.batch_size}) "
              "of train images and some val images", file=sys.stderr)
        return 2
    facts = IDENTITY + CLOTHING
    classes = {f: sorted({y[f] for y in train_y}) for f in facts}
    target = {f: torch.tensor([classes[f].index(y[f]) for y in train_y], device=device) for f in facts}

    torch.manual_seed(args.seed)
    encoder = build_image_encoder(cfg.model.image_encoder, size) if args.arch == "vit" else ARCHS[args.arch](cfg)
    width = feature_width(encoder)
    heads = torch.nn.ModuleDict({f: torch.nn.Linear(width, len(classes[f])) for f in facts})
    encoder.to(device)
    heads.to(device)
    params = list(encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    steps_per_epoch = len(train_x) // args.batch_size
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / total)))
    rng = np.random.default_rng(args.seed)
    aug = cfg.data.augment  # the trainer's augmentation and pixel statistics
    augment = TrainTransform(size, [MEAN] * 3, [STD] * 3, hflip=aug.hflip, pad=aug.pad, erasing=aug.erasing)
    plain = EvalTransform(size, [MEAN] * 3, [STD] * 3)
    start = time.time()
    for epoch in range(args.epochs):
        order = rng.permutation(len(train_x))
        for step in range(steps_per_epoch):
            rows = torch.from_numpy(order[step * args.batch_size:(step + 1) * args.batch_size])
            pixels = torch.stack([augment(train_x[i], rng) for i in rows.tolist()]).to(device, non_blocking=True)
            feats = image_features(encoder, pixels)
            loss = sum(F.cross_entropy(heads[f](feats), target[f][rows]) for f in facts) / len(facts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)

    encoder.eval()
    feats = features(encoder, val_x, plain).to(device)
    report = {"command": "python bench/pretrain_perception.py " + " ".join(sys.argv[1:]), "epochs": args.epochs,
              "train_images": len(train_x), "val_images": len(val_x), "seconds": round(time.time() - start),
              "val": val_table({f: heads[f](feats).argmax(1).tolist() for f in facts}, classes, val_y)}
    # saved before the ranker (minutes on a large test split): what the training made is kept whatever follows
    args.out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(args.out)
    (args.out / "perception.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out} (model.image_encoder.path={args.out})", flush=True)
    report["perceived_ranker"], report["test_probes"] = perceived_ranker(encoder, root, factors, train_x, plain)
    print_ranker(report["perceived_ranker"], report["test_probes"])
    (args.out / "perception.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
