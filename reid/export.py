"""Exported models: sharded safetensors + index, the resolved config, the tokenizer, in one directory.

Layout of an export (``<run>/best``, ``<run>/final``)::

    model-00001-of-00003.safetensors ...   weights (one file when smaller than max_shard_size)
    model.safetensors.index.json           always written: {"metadata", "weight_map": name -> file}
    config.yaml                            the run's resolved config
    encoders/image/config.json             the encoders' Hugging Face configs, so loading needs
    encoders/text/config.json              no pretrained directory
    tokenizer/                             tokenizer files (save_pretrained)
    reid_model.json                        num_classes, image size, pixel statistics, format version

The weights load with plain ``safetensors.torch.load_file`` per shard, or with :func:`load_exported`.
Under ZeRO-3 ``accelerator.save_model`` gathers the 16-bit weights (the ZeRO-3 JSONs set
``stage3_gather_16bit_weights_on_model_save``); those are bf16 under bf16 training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from reid.config import Config, load_config, save_config
from reid.errors import CheckpointError

FORMAT_VERSION = 1
INDEX = "model.safetensors.index.json"


def export_model(accelerator: Any, model: torch.nn.Module, out: Path, *, cfg: Config, tokenizer: Any, meta: dict) -> Path:
    """Collective (every rank calls it): write the export to a temporary name, then rename."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_model(model, str(tmp), max_shard_size=cfg.train.max_shard_size, safe_serialization=True)
    # Under DDP / ZeRO-1/2 every rank holds the full state and its save_model still lists (and may
    # re-create) the folder after the main process has written it: rename only once all are done.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        raw = accelerator.unwrap_model(model)
        _write_index(tmp)
        save_config(cfg, tmp / "config.yaml")
        for part, encoder in (("image", raw.image_encoder), ("text", raw.text_encoder)):
            encoder.config.save_pretrained(str(tmp / "encoders" / part))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "reid_model.json").write_text(json.dumps(dict(meta, format_version=FORMAT_VERSION), indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    accelerator.wait_for_everyone()
    return out


def _write_index(directory: Path) -> None:
    """Accelerate writes an index only when it shards; write one always, so readers have one path."""
    index = directory / INDEX
    if index.exists():
        return
    weight_map = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            weight_map.update({name: shard.name for name in f.keys()})
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))


def is_export(directory: Path) -> bool:
    d = Path(directory)
    return (d / "reid_model.json").is_file() and (d / INDEX).is_file()


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of an export, read shard by shard with plain safetensors."""
    directory = Path(directory)
    index = json.loads((directory / INDEX).read_text())
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(directory / shard)))
    return state


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any, Config, dict]:
    """Rebuild the model of an export (no pretrained directory needed); returns (model, tokenizer,
    config, meta) with the model in eval mode."""
    from transformers import AutoConfig, AutoTokenizer

    from reid.model import build_model

    directory = Path(directory)
    if not is_export(directory):
        raise CheckpointError(
            f"{directory}: not an exported reid model (expected reid_model.json and {INDEX}; "
            "point --checkpoint at <run>/best or <run>/final)"
        )
    meta = json.loads((directory / "reid_model.json").read_text())
    cfg = load_config(directory / "config.yaml")
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"), local_files_only=True)
    encoder_configs = {
        part: AutoConfig.from_pretrained(str(directory / "encoders" / part), local_files_only=True)
        for part in ("image", "text")
    }
    model = build_model(
        cfg.model, cfg.disentangle, num_classes=int(meta["num_classes"]), image_size=tuple(meta["image_size"]),
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        text_max_length=cfg.data.text_max_length, encoder_configs=encoder_configs,
    )
    state = load_state_dict(directory)
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise CheckpointError(f"{directory}: tensor '{name}' is missing from the export")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{directory}: tensor '{name}' has shape {tuple(state[name].shape)} in the export but "
                f"{tuple(tensor.shape)} in the model built from its config"
            )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), tokenizer, cfg, meta
