"""Strict loading of a Hugging Face encoder from a local directory.

``from_pretrained`` loads whatever fits and lists the rest in a log: a BERT directory given as the
image encoder became a randomly initialised ViT, and training went on. Here every tensor the encoder
builds must come from the directory, with its shape. Beyond those, a directory may only hold heads
that our encoders do not build (:data:`HEADS`) and, for a full CLIP directory read by one tower, the
other tower's tensors. Anything else is one :class:`ConfigError` naming the config key, the
directory and the first tensors at fault; the directory's ``config.json`` ``model_type`` is checked
before any weights are read.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from torch import nn

from reid.errors import ConfigError, MissingWeightsError

# The model types each encoder accepts, and the builder path each one takes.
ACCEPTED = {"image": ("vit", "clip", "clip_vision_model", "resnet", "convnext"), "text": ("bert", "clip", "clip_text_model")}
EXAMPLES = {"image": "google/vit-base-patch16-224", "text": "google-bert/bert-base-uncased"}
# Heads of the usual checkpoints that our encoders leave out: the pooler (built without), the
# classifier of google/vit-base-patch16-224 (a ViTForImageClassification) and the pre-training
# heads `cls.*` of bert-base-uncased (a BertForPreTraining).
HEADS = ("pooler.", "classifier.", "cls.")
# What a full CLIP directory holds besides one tower: the other tower, its projection, the logit scale.
OTHER_TOWER = {
    "image": ("text_model.", "text_projection.", "logit_scale"),
    "text": ("vision_model.", "visual_projection.", "logit_scale"),
}
SHOWN = 3  # tensors named per kind of misfit


def local_dir(path: str, where: str, kind: str) -> Path:
    """``path`` as a directory holding a config.json, or :class:`MissingWeightsError` saying how to get one."""
    root = Path(path).expanduser()
    if not (root / "config.json").is_file():
        what = "does not exist" if not root.exists() else "has no config.json"
        raise MissingWeightsError(
            f"{where}.path: '{path}' {what}; download the weights there first, e.g. "
            f"`hf download {EXAMPLES[kind]} --local-dir {path}` (or set {where}.path to '' "
            f"to build {where}.preset with random weights)"
        )
    return root


def model_type(root: Path, where: str, kind: str) -> str:
    """The directory's ``config.json`` ``model_type``, if a ``kind`` encoder accepts it."""
    try:
        found = json.loads((root / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise ConfigError(f"{where}.path: '{root}/config.json' is not a JSON object") from None
    if found not in ACCEPTED[kind]:
        raise ConfigError(
            f"{where}.path: '{root}' holds a {found!r} model (config.json model_type), which is not an "
            f"{kind} encoder; accepted: {', '.join(ACCEPTED[kind])}"
        )
    return found


def load_strict(cls: type, root: Path, where: str, kind: str, *, tolerated: tuple[str, ...] = (), **kwargs) -> nn.Module:
    """``cls.from_pretrained(root, **kwargs)`` that raises unless every tensor fits (module docstring).

    ``tolerated``: name prefixes, besides :data:`HEADS`, that the directory may hold unused. Attention
    is PyTorch's SDPA unless ``attn_implementation`` says otherwise (``None`` for a model without
    attention, as a CNN).
    """
    from transformers.utils import logging as hf_logging

    # transformers logs a report of what did not fit: it is checked below and raised as one line.
    # (A filter, not a level: a level at WARNING or above makes transformers log its TP plan.)
    report = hf_logging.get_logger("transformers.modeling_utils")
    report.addFilter(_drop_load_report)
    try:
        with whole_tensors():
            encoder, info = cls.from_pretrained(
                str(root), local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True,
                **{"attn_implementation": "sdpa", **kwargs},
            )
    except OSError as exc:  # e.g. config.json present but no weight file
        raise MissingWeightsError(
            f"{where}.path: cannot load weights from '{root}' ({str(exc).splitlines()[0]}); "
            f"download them first, e.g. `hf download {EXAMPLES[kind]} --local-dir {root}`"
        ) from None
    finally:
        report.removeFilter(_drop_load_report)
    misfits = _misfits(info, HEADS + tolerated, cls.base_model_prefix)
    if misfits:
        raise ConfigError(
            f"{where}.path: the weights in '{root}' do not fit its {cls.__name__} ({misfits}); "
            f"point {where}.path at a directory saved from that model"
        )
    return encoder


@contextlib.contextmanager
def whole_tensors():
    """Load whole tensors on every process, under ZeRO-3 too.

    transformers' ``from_pretrained`` loads straight into ZeRO-3 partitions (``deepspeed.zero.Init``:
    every parameter an empty shard) whenever a stage-3 ``HfDeepSpeedConfig`` is alive, and accelerate
    keeps one alive even with ``zero3_init_flag: false`` (accelerate 1.15). Resizing the position
    embeddings then fails on the empty shard. reid's encoders are small enough to load whole on each
    process; ZeRO-3 partitions them at ``accelerator.prepare``, as it does the heads.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = ref() if ref is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in record.getMessage()


def _misfits(info: dict, tolerated: tuple[str, ...], prefix: str) -> str:
    """Missing, unexpected and reshaped tensors of a loading report, the first few of each named."""

    def unused(name: str) -> bool:  # a head, named with or without the base model's prefix
        return name.removeprefix(f"{prefix}.").startswith(tolerated)

    missing = sorted(info["missing_keys"])
    unexpected = sorted(name for name in info["unexpected_keys"] if not unused(name))
    reshaped = sorted(info["mismatched_keys"])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {_first(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {_first(unexpected)}")
    if reshaped:
        shapes = [f"{name} {list(saved)} in the directory, {list(built)} in the model" for name, saved, built in reshaped]
        parts.append(f"{len(reshaped)} of another shape: {_first(shapes)}")
    return "; ".join(parts)


def _first(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more
