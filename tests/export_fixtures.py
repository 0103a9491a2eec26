"""A tiny exported model (random weights, no training) over the session's synthetic dataset."""

from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def tiny_config(root: Path, cache: Path, *overrides: str):
    """configs/synthetic.yaml on ``root``, small and single-threaded, with the fusion head on."""
    from reid.config import load_config

    return load_config(REPO / "configs" / "synthetic.yaml", [
        f"data.root={root}", f"data.cache_dir={cache}", "data.num_workers=0", "data.image_size=[64,32]",
        "eval.batch_size=16", "disentangle.loss_weights.fusion_match=0.5", *overrides,
    ])


def make_export(root: Path, out: Path, *overrides: str, seed: int = 0) -> Path:
    """Build the tiny model of :func:`tiny_config` and export it to ``out`` (as the trainer does)."""
    from accelerate import Accelerator

    from reid.data import build_tables, build_tokenizer
    from reid.export import export_model
    from reid.model import build_model

    cfg = tiny_config(root, out.parent / "cache", *overrides)
    tokenizer = build_tokenizer(cfg.data, "")
    num_classes = build_tables(cfg.data, tokenizer).num_classes
    torch.manual_seed(seed)
    model = build_model(cfg.model, cfg.disentangle, num_classes=num_classes, image_size=cfg.data.image_size,
                        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    meta = {"num_classes": num_classes, "image_size": list(cfg.data.image_size),
            "pixel_mean": [0.5] * 3, "pixel_std": [0.5] * 3}
    return export_model(Accelerator(cpu=True), model.eval(), out, cfg=cfg, tokenizer=tokenizer, meta=meta)
