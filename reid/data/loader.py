"""Torch datasets, collate functions and the two builders the engine calls.

Training batches follow :mod:`reid.data.keys`. Each text field is padded to its own longest
sequence in the batch (dynamic padding); masks are 1 for tokens and 0 for padding.

Unreadable images. During training a sample whose image cannot be decoded is replaced,
deterministically, by the next row of the table whose image decodes (texts, identity and negative
come from that row too, so pairs stay consistent); the batch reports how many images it replaced
in ``bad_images`` (a 0-d int64 tensor). The engine sums it and stops once more than
``data.max_bad_images`` were replaced in a run. During evaluation an unreadable gallery image
raises :class:`reid.errors.DataError` naming the file, in the main process (one line, no worker
traceback).

Loaders are built with this process's ``rank`` and ``world_size``: the samplers shard the data
themselves (:mod:`reid.data.samplers`), so the loaders must not be handed to
``accelerator.prepare``.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from reid.config import DataConfig
from reid.data import keys
from reid.data.cache import prepare_root
from reid.data.formats import format_spec
from reid.data.pairs import NegativeSampler, identity_neighbours
from reid.data.samplers import GlobalBatchSampler, ShardSampler
from reid.data.tables import build_tables
from reid.data.transforms import EvalTransform, TrainTransform, load_image, pixel_stats
from reid.errors import ConfigError, DataError

SIMILAR_NEIGHBOURS = 32  # data.sampler=similar: how far a chain looks for the next identity

MAX_CONSECUTIVE_BAD = 64  # a run of unreadable images this long means the data is broken


class SegmentDropout:
    """Leave segments of an identity text out of a training sample: each segment
    (:func:`reid.data.captions.text_segments`) is dropped with probability ``p``, at least one
    stays, and what is left is tokenized again. A shorter description can only be matched by the
    facts it keeps, so the identity branch cannot rely on the few facts that already tell most
    people of a batch apart (colours) and must learn the others too (build, hair style, gender)."""

    def __init__(self, tokenizer: Any, p: float, max_length: int):
        self.tokenizer, self.p, self.max_length = tokenizer, p, max_length

    def __call__(self, text: str, rng: np.random.Generator) -> Optional[list[int]]:
        """New token ids, or None when nothing was dropped (the cached ids stand)."""
        from reid.data.captions import text_segments

        segments = text_segments(text)
        keep = rng.random(len(segments)) >= self.p
        if keep.all() or len(segments) < 2:
            return None
        if not keep.any():
            keep[int(rng.integers(len(segments)))] = True
        kept = " ".join(seg for seg, k in zip(segments, keep) if k) + "."
        return self.tokenizer(kept, truncation=True, max_length=self.max_length)["input_ids"]


class TrainDataset(Dataset):
    """Map-style dataset indexed by ``(row, sample_seed)`` pairs from :class:`GlobalBatchSampler`."""

    def __init__(self, table: datasets.Dataset, transform: TrainTransform, negatives: NegativeSampler,
                 id_dropout: Optional[SegmentDropout] = None):
        columns = ["image_path", "pid", "id_input_ids", "cloth_input_ids", "cloth_valid"]
        columns += ["id_caption"] if id_dropout is not None else []
        self.table = table.select_columns(columns)  # decode only what a sample needs
        self.transform = transform
        self.negatives = negatives
        self.id_dropout = id_dropout

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        row, seed = item
        image_rng = np.random.default_rng([seed, 0])  # separate streams: a replaced image
        negative_rng = np.random.default_rng([seed, 1])  # does not shift the negative's draw
        for bad in range(MAX_CONSECUTIVE_BAD):
            used = (row + bad) % len(self.table)
            sample = self.table[used]
            try:
                image = load_image(sample["image_path"])
            except OSError:
                continue
            negative = self.table[self.negatives.draw(used, negative_rng)]
            id_ids = sample["id_input_ids"]
            if self.id_dropout is not None:
                id_ids = self.id_dropout(sample["id_caption"], np.random.default_rng([seed, 2])) or id_ids
            return {
                keys.IMAGES: self.transform(image, image_rng),
                keys.PIDS: sample["pid"],
                keys.ID_INPUT_IDS: id_ids,
                keys.CLOTH_INPUT_IDS: sample["cloth_input_ids"],
                keys.NEG_CLOTH_INPUT_IDS: negative["cloth_input_ids"],
                keys.CLOTH_VALID: sample["cloth_valid"],
                keys.INDEX: used,
                keys.BAD_IMAGES: bad,
            }
        first = self.table[row]["image_path"]
        raise DataError(f"{first}: this and the next {MAX_CONSECUTIVE_BAD - 1} training images are unreadable")


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: (ids, mask), both (B, L) int64."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(sequences), length), dtype=torch.int64)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
        mask[i, : len(seq)] = 1
    return ids, mask


class TrainCollate:
    """Stack a list of training samples into a batch (a class: it pickles into workers)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {
            keys.IMAGES: torch.stack([s[keys.IMAGES] for s in samples]),  # (B, 3, H, W)
            keys.PIDS: torch.tensor([s[keys.PIDS] for s in samples], dtype=torch.int64),
            keys.CLOTH_VALID: torch.tensor([s[keys.CLOTH_VALID] for s in samples], dtype=torch.bool),
            keys.INDEX: torch.tensor([s[keys.INDEX] for s in samples], dtype=torch.int64),
            keys.BAD_IMAGES: torch.tensor(sum(s[keys.BAD_IMAGES] for s in samples), dtype=torch.int64),
        }
        for field, (ids_key, mask_key) in _text_keys().items():
            batch[ids_key], batch[mask_key] = pad_sequences([s[ids_key] for s in samples], self.pad_id)
        return batch


def _text_keys() -> dict[str, tuple[str, str]]:
    return {
        f: (getattr(keys, f"{f.upper()}_INPUT_IDS"), getattr(keys, f"{f.upper()}_ATTENTION_MASK"))
        for f in keys.TEXT_FIELDS
    }


class GalleryDataset(Dataset):
    """Evaluation images; an unreadable one is reported, not raised, so the main process names it."""

    def __init__(self, table: datasets.Dataset, transform: EvalTransform):
        self.table = table.select_columns(["image_path", "file_path", "pid"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.table[index]
        try:
            image, error = self.transform(load_image(row["image_path"])), None
        except OSError as exc:
            image = torch.zeros(3, self.transform.height, self.transform.width)
            error = f"{row['image_path']}: unreadable gallery image ({exc})"
        return {keys.IMAGES: image, keys.PIDS: row["pid"], keys.INDEX: index, "error": error}


def collate_gallery(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        keys.IMAGES: torch.stack([s[keys.IMAGES] for s in samples]),  # (B, 3, H, W)
        keys.PIDS: torch.tensor([s[keys.PIDS] for s in samples], dtype=torch.int64),
        keys.INDEX: torch.tensor([s[keys.INDEX] for s in samples], dtype=torch.int64),
        "errors": [s["error"] for s in samples if s["error"]],
    }


class QueryDataset(Dataset):
    """Evaluation captions, three ways: the whole caption, its identity part, its clothing part."""

    COLUMNS = {keys.INPUT_IDS: "input_ids", keys.ID_INPUT_IDS: "id_input_ids", keys.CLOTH_INPUT_IDS: "cloth_input_ids"}

    def __init__(self, table: datasets.Dataset):
        self.table = table.select_columns([*self.COLUMNS.values(), "cloth_valid", "pid"])

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.table[index]
        out = {key: row[column] for key, column in self.COLUMNS.items()}
        out.update({keys.CLOTH_VALID: row["cloth_valid"], keys.PIDS: row["pid"], keys.INDEX: index})
        return out


class QueryCollate:
    """Pads each of the three texts to its own longest row: ``input_ids`` / ``attention_mask``,
    ``id_input_ids`` / ``id_attention_mask``, ``cloth_input_ids`` / ``cloth_attention_mask``."""

    MASKS = {keys.INPUT_IDS: keys.ATTENTION_MASK, keys.ID_INPUT_IDS: keys.ID_ATTENTION_MASK,
             keys.CLOTH_INPUT_IDS: keys.CLOTH_ATTENTION_MASK}

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = {}
        for ids_key, mask_key in self.MASKS.items():
            out[ids_key], out[mask_key] = pad_sequences([s[ids_key] for s in samples], self.pad_id)
        out[keys.CLOTH_VALID] = torch.tensor([s[keys.CLOTH_VALID] for s in samples], dtype=torch.bool)
        out[keys.PIDS] = torch.tensor([s[keys.PIDS] for s in samples], dtype=torch.int64)
        out[keys.INDEX] = torch.tensor([s[keys.INDEX] for s in samples], dtype=torch.int64)
        return out


class CheckedGalleryLoader:
    """Iterates a gallery loader and raises DataError (main process, one line) on a bad image."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for batch in self.loader:
            errors = batch.pop("errors")
            if errors:
                raise DataError(errors[0])
            yield batch


@dataclass
class TrainData:
    dataset: TrainDataset
    sampler: GlobalBatchSampler  # call set_epoch(e) before each epoch, set_start(sample, order_size) to resume
    loader: DataLoader
    num_classes: int  # training identities (the classifier's width)
    tokenizer: Any
    table: datasets.Dataset  # the training table (pids, captions, file paths)


@dataclass
class EvalData:
    gallery_loader: CheckedGalleryLoader  # this rank's shard of the gallery: {images, pids, index}
    query_loader: DataLoader  # this rank's shard of the queries: three texts, cloth_valid, pids, index
    gallery: datasets.Dataset  # every image of the split (pid, file_path): gather, then truncate
    queries: datasets.Dataset  # every caption of the split (pid, file_path, caption)


def _statistics(cfg: DataConfig, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> tuple:
    """:func:`reid.data.transforms.pixel_stats` of the config and the statistics the caller resolved."""
    return pixel_stats((cfg.pixel_mean, cfg.pixel_std), (mean, std))


def _seed_worker(worker_id: int) -> None:
    """Seed the worker's global RNGs from torch's per-worker seed (nothing here uses them), and leave
    stopping to the main process: Ctrl-C reaches the whole process group (and torchrun forwards INT
    and TERM to it), but the main process still needs batches to reach the step boundary where it
    checkpoints. A worker still ends with its main process (torch's watchdog sees the parent go)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader_options(num_workers: int, seed: int, persistent: bool) -> dict[str, Any]:
    return {
        "num_workers": num_workers,
        "persistent_workers": persistent and num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
        "worker_init_fn": _seed_worker,
        "generator": torch.Generator().manual_seed(seed),
    }


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is None:
        raise DataError(f"tokenizer {tokenizer.name_or_path!r} has no padding token")
    return int(tokenizer.pad_token_id)


def build_train_data(
    cfg: DataConfig,
    tokenizer: Any,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    pixel_mean: Optional[Sequence[float]] = None,
    pixel_std: Optional[Sequence[float]] = None,
) -> TrainData:
    """The training loader of this process (call inside ``accelerator.main_process_first()``)."""
    tables = build_tables(cfg, tokenizer, prepare_root(cfg))
    table = tables.train
    mean, std = _statistics(cfg, pixel_mean, pixel_std)
    aug = cfg.augment
    transform = TrainTransform(cfg.image_size, mean, std, hflip=aug.hflip, pad=aug.pad, erasing=aug.erasing)
    pids = np.asarray(table["pid"], dtype=np.int64)
    candidates = table["neg_candidates"] if "neg_candidates" in table.column_names else None
    negatives = NegativeSampler(pids, np.asarray(table["cloth_valid"], dtype=bool), candidates)
    id_dropout = None
    if cfg.id_segment_drop > 0:
        if cfg.id_text != "id":
            raise ConfigError("data.id_segment_drop: drops segments of the identity part, so it needs data.id_text=id")
        id_dropout = SegmentDropout(tokenizer, cfg.id_segment_drop, cfg.text_max_length)
    dataset = TrainDataset(table, transform, negatives, id_dropout)
    neighbours = None
    if cfg.sampler == "similar":
        neighbours = identity_neighbours(pids, table["id_caption"], SIMILAR_NEIGHBOURS)
    sampler = GlobalBatchSampler(
        pids, cfg.batch_size, world_size, rank, seed, mode=cfg.sampler, num_instances=cfg.num_instances,
        neighbours=neighbours, group=cfg.similar_group,
    )
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=TrainCollate(_pad_id(tokenizer)),
        **_loader_options(cfg.num_workers, seed, persistent=True),
    )
    return TrainData(dataset, sampler, loader, tables.num_classes, tokenizer, table)


def build_eval_data(
    cfg: DataConfig,
    tokenizer: Any,
    split: str,
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    pixel_mean: Optional[Sequence[float]] = None,
    pixel_std: Optional[Sequence[float]] = None,
) -> EvalData:
    """Gallery and query loaders of ``split`` ("val" / "test"), sharded over processes."""
    splits = format_spec(cfg.dataset).splits
    if split not in splits or split == "train":
        hint = "; set eval.split=test" if split == "val" else ""
        raise DataError(
            f"dataset {cfg.dataset!r} has no evaluation split {split!r} (it has {', '.join(splits)}){hint}"
        )
    tables = build_tables(cfg, tokenizer, prepare_root(cfg))
    if f"{split}_gallery" not in tables.tables:
        where = cfg.root or "the synthetic default"
        raise DataError(f"dataset {cfg.dataset!r} at {where} has no records in split {split!r}")
    gallery, queries = tables.gallery(split), tables.queries(split)
    transform = EvalTransform(cfg.image_size, *_statistics(cfg, pixel_mean, pixel_std))
    gallery_loader = DataLoader(
        GalleryDataset(gallery, transform), batch_size=batch_size, collate_fn=collate_gallery,
        sampler=ShardSampler(len(gallery), rank, world_size),
        **_loader_options(cfg.num_workers, 0, persistent=False),
    )
    query_loader = DataLoader(
        QueryDataset(queries), batch_size=batch_size,
        collate_fn=QueryCollate(_pad_id(tokenizer)), sampler=ShardSampler(len(queries), rank, world_size),
    )
    return EvalData(CheckedGalleryLoader(gallery_loader), query_loader, gallery, queries)
