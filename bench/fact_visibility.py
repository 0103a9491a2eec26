"""Can each drawn fact be seen at the benchmark's resolution? A small CNN says, independently of the ViT.

    python bench/fact_visibility.py [--config configs/synthetic_cc.yaml] [--epochs 15]
        [--json /tmp/reid-visibility.json] [key=value ...]

The attribute oracle's ceiling is only a ceiling of what a model can *achieve* when every fact it
compares is visible in the images. This trains a small convolutional network (four 3x3 conv layers,
global max-pooling: translation-invariant, the inductive bias a from-scratch ViT lacks) to read
every drawn fact, identity and clothing, from the **train** split's images (ground truth from
``synth_factors.json``), with the trainer's augmentation, and prints each fact's accuracy on the
**val** split's images beside its chance rate (the majority value's share). Set it beside
``bench/pretrain_perception.py``'s table (the benchmark's ViT trained on the same labels): a fact
this network reads and the ViT does not is visible, and the ViT's perception is what falls short.

A beard is drawn only on a face, so from behind it cannot be seen: its best accuracy is below 100.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.pretrain_perception import CLOTHING, IDENTITY, MEAN, STD, load_split, val_table  # noqa: E402
from reid.config import load_config  # noqa: E402
from reid.data import prepare_root  # noqa: E402
from reid.data.transforms import EvalTransform, TrainTransform  # noqa: E402


class SmallCNN(nn.Module):
    """Four 3x3 conv blocks (the first three halve the resolution), global max-pool, one linear head per fact."""

    def __init__(self, classes: dict[str, int], width: int = 64) -> None:
        super().__init__()
        layers, c_in = [], 3
        for i, c_out in enumerate((width // 2, width, width, width)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            layers += [nn.MaxPool2d(2)] if i < 3 else []
            c_in = c_out
        self.body = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({f: nn.Linear(width, n) for f, n in classes.items()})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.body(pixels)
        return {f: head(x) for f, head in self.heads.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "synthetic_cc.yaml")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config, e.g. data.root=DIR")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    root = Path(prepare_root(cfg.data))
    if not (root / "synth_factors.json").is_file():
        print(f"error: {root}: no synth_factors.json; the facts to read come from a reid-synth dataset", file=sys.stderr)
        return 2
    factors = json.loads((root / "synth_factors.json").read_text())
    train_x, train_y = load_split(root, factors, "train")
    val_x, val_y = load_split(root, factors, "val")
    if len(train_x) < args.batch_size or not val_x:
        print(f"error: {root}: {len(train_x)} train and {len(val_x)} val images; needs a batch ({args.batch_size}) "
              "of train images and some val images", file=sys.stderr)
        return 2
    facts = IDENTITY + CLOTHING
    classes = {f: sorted({y[f] for y in train_y}) for f in facts}
    target = {f: torch.tensor([classes[f].index(y[f]) for y in train_y]) for f in facts}

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    size = tuple(cfg.data.image_size)
    aug = cfg.data.augment
    augment = TrainTransform(size, [MEAN] * 3, [STD] * 3, hflip=aug.hflip, pad=aug.pad, erasing=aug.erasing)
    plain = EvalTransform(size, [MEAN] * 3, [STD] * 3)
    net = SmallCNN({f: len(c) for f, c in classes.items()})
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01)
    steps = len(train_x) // args.batch_size
    start = time.time()
    for epoch in range(args.epochs):
        net.train()
        order = rng.permutation(len(train_x))
        for step in range(steps):
            rows = order[step * args.batch_size:(step + 1) * args.batch_size]
            logits = net(torch.stack([augment(train_x[i], rng) for i in rows]))
            loss = sum(F.cross_entropy(logits[f], target[f][rows]) for f in facts) / len(facts)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)

    net.eval()
    with torch.no_grad():
        predicted = {f: [] for f in facts}
        for i in range(0, len(val_x), 256):
            out = net(torch.stack([plain(img) for img in val_x[i:i + 256]]))
            for f in facts:
                predicted[f] += out[f].argmax(1).tolist()
    report = {"command": "python bench/fact_visibility.py " + " ".join(sys.argv[1:]), "root": str(root),
              "epochs": args.epochs, "train_images": len(train_x), "val_images": len(val_x),
              "seconds": round(time.time() - start), "val": val_table(predicted, classes, val_y)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
