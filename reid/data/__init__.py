"""The data pipeline: readers, caption splitting, tokenizer, tables, negatives, samplers, loaders.

    tokenizer = build_tokenizer(cfg.data, cfg.model.text_encoder.path)
    with accelerator.main_process_first():
        train = build_train_data(cfg.data, tokenizer, rank=..., world_size=..., seed=...)
    val = build_eval_data(cfg.data, tokenizer, "val", batch_size=..., rank=..., world_size=...)

The names below are imported lazily, so ``from reid.data import keys`` stays light (no
``datasets`` / ``transformers`` import).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare_root": "reid.data.cache",
    "cache_root": "reid.data.cache",
    "split_caption": "reid.data.captions",
    "SPLITTER_VERSION": "reid.data.captions",
    "read_annotations": "reid.data.formats",
    "Record": "reid.data.formats",
    "FORMATS": "reid.data.formats",
    "build_tokenizer": "reid.data.tokenizer",
    "build_tables": "reid.data.tables",
    "Tables": "reid.data.tables",
    "NegativeSampler": "reid.data.pairs",
    "hard_candidates": "reid.data.pairs",
    "GlobalBatchSampler": "reid.data.samplers",
    "ShardSampler": "reid.data.samplers",
    "sample_seed": "reid.data.samplers",
    "TrainTransform": "reid.data.transforms",
    "EvalTransform": "reid.data.transforms",
    "load_image": "reid.data.transforms",
    "TrainData": "reid.data.loader",
    "EvalData": "reid.data.loader",
    "build_train_data": "reid.data.loader",
    "build_eval_data": "reid.data.loader",
    "TrainCollate": "reid.data.loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reid.data' has no attribute {name!r}")
