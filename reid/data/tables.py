"""Hugging Face ``datasets`` tables built from an annotation file, tokenized and cached as arrow.

One ``DatasetDict`` per (dataset, settings):

- ``train`` — one row per (image, caption) pair, as IRRA: ``image_path`` (absolute: the root is
  part of the cache key), ``file_path`` (relative to ``root/imgs``), ``image_id``, ``pid``
  (training identities remapped to 0..N-1, in sorted order of the original ids), ``orig_pid``,
  ``caption``, ``id_caption``, ``cloth_caption``, ``cloth_valid`` and the unpadded token ids
  ``input_ids`` (full caption), ``id_input_ids`` (``id_caption``, or the full caption when
  ``data.id_text == "full"``) and ``cloth_input_ids``, truncated to ``data.text_max_length``.
  With ``data.negatives == "hard"`` also ``neg_candidates`` (see :mod:`reid.data.pairs`).
- ``<split>_gallery`` — one row per image of an evaluation split: ``image_path``, ``file_path``,
  ``image_id``, ``pid`` (original id).
- ``<split>_queries`` — one row per caption of the split (IRRA's query set): ``caption``,
  ``id_caption``, ``cloth_caption``, ``cloth_valid``, ``pid``, ``file_path``, ``input_ids`` (full
  caption), ``id_input_ids`` (always the identity part) and ``cloth_input_ids`` (the clothing
  part): the retrieval modes of :mod:`reid.evaluation` read the parts they need.

The cache entry ``<cache>/tables/<dataset>-<key>`` is keyed by the dataset name, the absolute root,
the annotation file's size and mtime, the tokenizer's fingerprint, the max length, ``id_text``, the
splitter version and the negatives settings. It is written to a temporary directory and renamed
(two processes cannot corrupt it), and a second start memory-maps it without re-tokenizing. Every
image file's existence is checked when an entry is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import datasets
from transformers import PreTrainedTokenizerFast

from reid.config import DataConfig
from reid.data.cache import cache_root, fingerprint, prepare_root, write_atomically
from reid.data.captions import SPLITTER_VERSION, split_caption
from reid.data.formats import (
    Record,
    annotation_path,
    check_image_files,
    format_spec,
    image_dir,
    read_annotations,
    split_records,
)
from reid.data.pairs import hard_candidates
from reid.data.tokenizer import tokenizer_fingerprint
from reid.errors import DataError

TABLES_VERSION = 2  # bump when a column changes (2: queries carry their clothing part)
META_FILE = "reid_meta.json"


@dataclass
class Tables:
    tables: datasets.DatasetDict
    num_classes: int  # training identities
    path: Path  # the cache entry
    from_cache: bool  # False when this call built the entry

    @property
    def train(self) -> datasets.Dataset:
        return self.tables["train"]

    def gallery(self, split: str) -> datasets.Dataset:
        return self.tables[f"{split}_gallery"]

    def queries(self, split: str) -> datasets.Dataset:
        return self.tables[f"{split}_queries"]


def build_tables(cfg: DataConfig, tokenizer: PreTrainedTokenizerFast, root: Optional[Path] = None) -> Tables:
    """Load the cached tables for ``cfg`` + ``tokenizer``, building them on a miss."""
    root = Path(root) if root is not None else prepare_root(cfg)
    ann = annotation_path(root, cfg.dataset)
    if not ann.is_file():
        read_annotations(root, cfg.dataset)  # raises the DataError naming what is missing
    stat = ann.stat()
    key = fingerprint(
        {
            "version": TABLES_VERSION,
            "dataset": cfg.dataset,
            "root": str(root.resolve()),
            "annotation": [stat.st_size, stat.st_mtime_ns],
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "max_length": cfg.text_max_length,
            "id_text": cfg.id_text,
            "splitter": SPLITTER_VERSION,
            "negatives": [cfg.negatives, cfg.hard_topk if cfg.negatives == "hard" else 0]
            + ([cfg.hard_search] if cfg.negatives == "hard" and cfg.hard_search != "auto" else []),
        }
    )
    final = cache_root(cfg) / "tables" / f"{cfg.dataset}-{key}"
    from_cache = final.exists()
    if not from_cache:
        write_atomically(final, lambda tmp: _build(cfg, tokenizer, root, tmp, key))
    meta = json.loads((final / META_FILE).read_text())
    tables = datasets.load_from_disk(str(final))
    return Tables(tables=tables, num_classes=meta["num_classes"], path=final, from_cache=from_cache)


def _build(cfg: DataConfig, tokenizer: PreTrainedTokenizerFast, root: Path, out: Path, key: str) -> None:
    ann = annotation_path(root, cfg.dataset)
    records = read_annotations(root, cfg.dataset)
    check_image_files(ann, records, image_dir(root))
    images = image_dir(root).resolve()
    train = split_records(records, "train")
    if not train:
        raise DataError(f"{ann}: no records in split 'train'")
    tables = {}
    for split in format_spec(cfg.dataset).splits[1:]:  # the small splits first: then the records can go
        part = split_records(records, split)
        if part:
            gallery, queries = _eval_columns(part, images)
            tables[f"{split}_gallery"] = datasets.Dataset.from_dict(gallery)
            queries_table = datasets.Dataset.from_dict(queries)
            tables[f"{split}_queries"] = _tokenize(queries_table, tokenizer, cfg, f"{key}-{split}")
    columns, num_classes = _train_columns(train, images)
    del records, train  # at a million captions every copy held in Python objects counts
    valid_pids = {p for p, ok in zip(columns["pid"], columns["cloth_valid"]) if ok}
    if len(valid_pids) < 2:
        raise DataError(
            f"{ann}: fewer than two training identities have a caption with a clothing part; the "
            "cloth-matching terms need a negative clothing caption of another identity"
        )
    if cfg.negatives == "hard":
        columns["neg_candidates"] = hard_candidates(
            columns["cloth_caption"], columns["pid"], columns["cloth_valid"], cfg.hard_topk, cfg.hard_search
        )
    train_table = _to_arrow(columns)  # empties `columns` as it goes
    tables = {"train": _tokenize(train_table, tokenizer, cfg, f"{key}-train", train=True), **tables}
    datasets.DatasetDict(tables).save_to_disk(str(out))
    meta = {"num_classes": num_classes, "rows": {name: len(t) for name, t in tables.items()}}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))


def _to_arrow(columns: dict[str, list[Any]]) -> datasets.Dataset:
    """The same table as ``datasets.Dataset.from_dict(columns)``, built one column at a time, each
    Python list dropped once it is in arrow: at a million captions from_dict held both at once
    (a 1.6 GB transient, measured)."""
    import pyarrow as pa
    from datasets.table import InMemoryTable

    types = {"neg_candidates": pa.list_(pa.int64())}  # typed even when every list is empty
    arrays = {}
    for name in list(columns):
        arrays[name] = pa.array(columns.pop(name), type=types.get(name))
    return datasets.Dataset(InMemoryTable(pa.table(arrays)))


def _parts(rec: Record, k: int) -> tuple[str, str]:
    """(id text, cloth text) of caption k: the record's own fields win over the splitter."""
    caption = rec.captions[k]
    id_text, cloth_text = split_caption(caption)
    if rec.id_captions is not None:
        id_text = rec.id_captions[k].strip() or caption
    if rec.cloth_captions is not None:
        cloth_text = rec.cloth_captions[k].strip()
    return id_text, cloth_text


def _train_columns(train: list[Record], images: Path) -> tuple[dict[str, list[Any]], int]:
    pid_map = {pid: i for i, pid in enumerate(sorted({r.pid for r in train}))}
    names = ("image_path", "file_path", "image_id", "pid", "orig_pid", "caption", "id_caption",
             "cloth_caption", "cloth_valid")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for image_id, rec in enumerate(train):
        for k, caption in enumerate(rec.captions):
            id_text, cloth_text = _parts(rec, k)
            row = (str(images / rec.file_path), rec.file_path, image_id, pid_map[rec.pid], rec.pid,
                   caption, id_text, cloth_text, bool(cloth_text))
            for name, value in zip(names, row):
                columns[name].append(value)
    return columns, len(pid_map)


def _eval_columns(part: list[Record], images: Path) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    gallery: dict[str, list[Any]] = {"image_path": [], "file_path": [], "image_id": [], "pid": []}
    queries: dict[str, list[Any]] = {"caption": [], "id_caption": [], "cloth_caption": [], "cloth_valid": [],
                                     "pid": [], "file_path": []}
    for image_id, rec in enumerate(part):
        for name, value in zip(gallery, (str(images / rec.file_path), rec.file_path, image_id, rec.pid)):
            gallery[name].append(value)
        for k, caption in enumerate(rec.captions):
            id_text, cloth_text = _parts(rec, k)
            row = (caption, id_text, cloth_text, bool(cloth_text), rec.pid, rec.file_path)
            for name, value in zip(queries, row):
                queries[name].append(value)
    return gallery, queries


def _tokenize(
    table: datasets.Dataset, tokenizer: PreTrainedTokenizerFast, cfg: DataConfig, fp: str, train: bool = False
) -> datasets.Dataset:
    """Add unpadded, truncated token ids with one batched ``map`` (nothing is tokenized later)."""
    fields = {"input_ids": "caption", "id_input_ids": "id_caption", "cloth_input_ids": "cloth_caption"}
    if train:  # the identity branch may train on the full text (data.id_text)
        fields["id_input_ids"] = "caption" if cfg.id_text == "full" else "id_caption"

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out = {}
        for name, source in fields.items():
            enc = tokenizer(batch[source], truncation=True, max_length=cfg.text_max_length)
            out[name] = enc["input_ids"]  # [CLS] ... [SEP], unpadded
        return out

    return table.map(encode, batched=True, batch_size=2000, new_fingerprint=fp, desc="Tokenizing captions")
