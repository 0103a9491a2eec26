"""Fit the clothing eraser (reid/erasure.py) to an exported model and write it as a new export.

    accelerate launch launch/erase_clothing.py --checkpoint runs/<run>/best --out runs/<run>/best-erased
        [--rank 16] [key=value ...]

The eraser is fit on the train split of the model's own data (its config's data section, or the
``data.*`` overrides given), from the captions alone: the clothing words of each image's captions,
minus what its identity text implies, are erased from the identity embedding (``rank`` directions).
The new export is the same model plus the eraser (``model.clothing_eraser.rank`` set in its
config); the clothing-invariant mode and the composed standard score then use the erased identity
embedding. A model trained with ``model.clothing_eraser.rank`` > 0 already has one (the trainer
refits it before every evaluation): this refits it, at ``--rank`` if given. ``--rank 0`` takes the
eraser off: the new export is the same model without one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reid.config import load_config
from reid.engine.accel import build_accelerator, settle_launch_environment
from reid.errors import ConfigError, report_user_errors

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_RANK = 16  # what docs/ablation.md measures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="an exported model: <run>/best or <run>/final")
    parser.add_argument("--out", type=Path, required=True, help="where to write the new export (must not exist)")
    parser.add_argument("--rank", type=int, default=None,
                        help=f"directions to erase (default: the model's model.clothing_eraser.rank, else {DEFAULT_RANK}); "
                             "0: export the model without an eraser")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the model's config, e.g. data.root=DIR")
    return parser.parse_args(argv)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settle_launch_environment(CHECKOUT)
    from reid.data import prepare_root
    from reid.erasure import ClothingEraser, fit_clothing_eraser
    from reid.export import export_model, load_exported

    if args.rank is not None and args.rank < 0:
        raise ConfigError(f"--rank: {args.rank} must be >= 0 (0 takes the eraser off)")
    if args.out.exists():
        raise ConfigError(f"--out: {args.out} exists; name a new directory (nothing is overwritten)")
    model, tokenizer, cfg, meta = load_exported(args.checkpoint)
    rank = args.rank if args.rank is not None else (cfg.model.clothing_eraser.rank or DEFAULT_RANK)
    cfg = load_config(args.checkpoint / "config.yaml", [*args.overrides, f"model.clothing_eraser.rank={rank}"])
    accelerator = build_accelerator(cfg)
    if rank == 0:  # the same weights without an eraser: what a model built from this config has
        model.clothing_eraser = None
        done = "clothing eraser: none (--rank 0)"
    else:
        if model.clothing_eraser is None:
            model.clothing_eraser = ClothingEraser(cfg.model.embed_dim)
        model = model.to(accelerator.device)
        with accelerator.local_main_process_first():
            root = prepare_root(cfg.data)
        done = fit_clothing_eraser(model, model.clothing_eraser, cfg.data, cfg.model.clothing_eraser, tokenizer,
                                   accelerator, root, batch_size=cfg.eval.batch_size, pixel_mean=meta.get("pixel_mean"),
                                   pixel_std=meta.get("pixel_std")).describe()
    out = export_model(accelerator, model, args.out, cfg=cfg, tokenizer=tokenizer, meta=meta)
    if accelerator.is_main_process:
        print(done, flush=True)
        print(f"wrote {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
