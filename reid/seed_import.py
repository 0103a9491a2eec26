"""Import a checkpoint trained by the seed's code into a reid export.

    python -m reid.seed_import --checkpoint seed_model.pth --config configs/cuhk_pedes_seed.yaml \
        --out exports/seed [key=value ...]

The seed's ``load_param`` reads a ``.pth`` / ``.pt`` file holding a state dict, or a dict with the
state dict under ``state_dict`` or ``model``; so does this, with ``torch.load(weights_only=True)``
(a checkpoint cannot run code). Its keys map onto reid's model built from ``--config`` (which names
the same pretrained ViT / BERT directories and sizes the seed was trained with):

==============================  =====================================================
seed                            reid
==============================  =====================================================
``visual_encoder.*``            ``image_encoder.*``
``text_encoder.*``              ``text_encoder.*``
``scale`` (a bare parameter)    ``scale.value``
``module.`` prefix (DDP)        removed
``*.pooler.*``                  dropped (reid builds its encoders without the pooler)
everything else                 the same name (``id_projection``, ``shared_mlp``, ...)
==============================  =====================================================

Every tensor the retrieval path reads (the encoders, the two branch projections, ``shared_mlp``,
``image_mlp``, ``text_mlp``) must be in the checkpoint with reid's shape, or the import stops with
one line naming the first ones. Training-only heads the checkpoint lacks (a classifier the seed's
run did not have, the pair-match bias) keep their initial values and are listed in the report, as
are checkpoint tensors reid has no place for. The export then loads, evaluates and searches like
any other (``launch/evaluate.py``, ``reid-search``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from reid.config import Config, load_config
from reid.errors import CheckpointError, ReidError, report_user_errors

RENAMES = (("visual_encoder.", "image_encoder."),)
DROPPED = (".pooler.",)
RETRIEVAL = ("image_encoder.", "text_encoder.", "id_projection.", "cloth_projection.", "shared_mlp.",
             "image_mlp.", "text_mlp.")
SHOWN = 4


def read_seed_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a seed checkpoint, as the seed's load_param finds it (weights only)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, a non-checkpoint file, objects weights_only refuses
        raise CheckpointError(f"{path}: not a weights-only torch checkpoint ({str(exc).splitlines()[0]})") from None
    if isinstance(checkpoint, dict):
        checkpoint = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path}: holds no state dict (a name -> tensor mapping, or one under "
                              "'state_dict' or 'model')")
    return checkpoint


def map_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the seed's tensors under reid's names, the names dropped on the way)."""
    mapped, dropped = {}, []
    for name, tensor in state.items():
        new = name.removeprefix("module.")
        if any(part in f".{new}" for part in DROPPED):
            dropped.append(name)
            continue
        for old, ours in RENAMES:
            if new.startswith(old):
                new = ours + new[len(old):]
        if new == "scale":
            new, tensor = "scale.value", tensor.reshape(1)
        mapped[new] = tensor
    return mapped, dropped


def import_seed(checkpoint: Path, cfg: Config, out: Path) -> dict[str, Any]:
    """Build reid's model for ``cfg``, load the seed checkpoint into it, export it to ``out``;
    returns the report (loaded / kept at init / unused / dropped tensor names)."""
    from accelerate import Accelerator

    from reid.data.tokenizer import build_tokenizer
    from reid.data.transforms import pixel_stats
    from reid.export import export_model
    from reid.model import build_model

    state, dropped = map_keys(read_seed_state(checkpoint))
    classifier = state.get("id_classifier.weight")
    num_classes = int(classifier.shape[0]) if classifier is not None else 1
    tokenizer = build_tokenizer(cfg.data, cfg.model.text_encoder.path)
    model = build_model(cfg.model, cfg.disentangle, num_classes=num_classes, image_size=cfg.data.image_size,
                        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id, text_max_length=cfg.data.text_max_length)
    own = model.state_dict()
    missing = [n for n in own if n not in state]
    reshaped = [f"{n} {list(state[n].shape)} in the checkpoint, {list(own[n].shape)} in reid"
                for n in own if n in state and state[n].shape != own[n].shape]
    needed = [n for n in missing if n.startswith(RETRIEVAL)]
    if needed or reshaped:
        parts = [f"{len(needed)} retrieval tensors missing: {', '.join(needed[:SHOWN])}"] if needed else []
        parts += [f"{len(reshaped)} of another shape: {'; '.join(reshaped[:SHOWN])}"] if reshaped else []
        raise CheckpointError(f"{checkpoint}: does not fit the model of the config ({'; '.join(parts)}); "
                              "use the config the seed was trained with (encoders, sizes, enabled terms)")
    loaded = {n: t for n, t in state.items() if n in own}
    model.load_state_dict(loaded, strict=False)
    mean, std = pixel_stats((cfg.data.pixel_mean, cfg.data.pixel_std), encoder_path=cfg.model.image_encoder.path)
    meta = {"num_classes": num_classes, "image_size": list(cfg.data.image_size), "pixel_mean": list(mean),
            "pixel_std": list(std), "imported_from": str(Path(checkpoint).resolve())}
    export_model(Accelerator(cpu=True), model, Path(out), cfg=cfg, tokenizer=tokenizer, meta=meta)
    return {"loaded": sorted(loaded), "kept_at_init": sorted(missing), "unused": sorted(n for n in state if n not in own),
            "dropped": sorted(dropped)}


@report_user_errors
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reid.seed_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="the seed's .pth / .pt file")
    parser.add_argument("--config", type=Path, required=True, help="the config the seed was trained with, e.g. configs/cuhk_pedes_seed.yaml")
    parser.add_argument("--out", type=Path, required=True, help="the export directory to write")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config")
    args = parser.parse_args(argv)
    try:
        report = import_seed(args.checkpoint, load_config(args.config, args.overrides), args.out)
    except ReidError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"loaded {len(report['loaded'])} tensors from {args.checkpoint}")
    for key, what in (("kept_at_init", "not in the checkpoint, kept at their initial values (training-only heads)"),
                      ("unused", "in the checkpoint, with no place in reid's model"),
                      ("dropped", "dropped (encoder poolers: reid builds none)")):
        if report[key]:
            print(f"{len(report[key])} {what}: {', '.join(report[key][:8])}{' ...' if len(report[key]) > 8 else ''}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
