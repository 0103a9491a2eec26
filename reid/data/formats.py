"""Annotation readers for CUHK-PEDES, ICFG-PEDES and RSTPReid, with one-line validation errors.

Layouts (as distributed, and as IRRA reads them)::

    CUHK-PEDES  root/reid_raw.json        [{split, captions, file_path, id, processed_tokens}, ...]
                or root/caption_all.json  [{id, file_path, captions}, ...]: the file the CUHK-PEDES
                                          download ships, without 'split' (see below)
    ICFG-PEDES  root/ICFG-PEDES.json      same keys; splits train / test only (no val)
    RSTPReid    root/data_captions.json   [{id, img_path, captions, split}, ...]
    images      root/imgs/<file_path>

A CUHK-PEDES record without ``split`` gets the standard split by identity, the one ``reid_raw.json``
writes out: ids 1-11003 train, 11004-12003 val, 12004-13003 test (11,003 / 1,000 / 1,000 people).
``reid-data`` compares the counts per split with the published ones (:data:`PUBLISHED`).

A record may also carry ``id_caption`` / ``cloth_caption``: a string used for every caption of the
record, or a list aligned with ``captions``. They win over the rule-based splitter
(:mod:`reid.data.captions`); an empty ``cloth_caption`` marks a caption without a clothing part.

Every problem raises :class:`reid.errors.DataError` with one line naming the file, the record
(index and file path) and the problem. Checked: the top level is a list of objects; ``id`` is an
integer; ``captions`` is a non-empty list of non-empty strings; the image path is a string naming
an existing file under ``imgs/``; the split is one the dataset has; one image path is not listed
under two identities or two splits; one identity does not appear in two splits (that would leak
test identities into training). The same image listed twice with the same identity and split is
accepted, as IRRA does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from reid.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class FormatSpec:
    """Where a dataset keeps its annotation file, which key names the image, which splits exist."""

    annotation: str
    path_key: str
    splits: tuple[str, ...]
    alternatives: tuple[str, ...] = ()  # other names its distributions give the file, read if the first is absent
    split_by_id: tuple[tuple[str, int, int], ...] = ()  # (split, first id, last id) for records without 'split'


FORMATS: dict[str, FormatSpec] = {
    "cuhk_pedes": FormatSpec(
        "reid_raw.json", "file_path", ("train", "val", "test"), alternatives=("caption_all.json",),
        split_by_id=(("train", 1, 11003), ("val", 11004, 12003), ("test", 12004, 13003)),
    ),
    "icfg_pedes": FormatSpec("ICFG-PEDES.json", "file_path", ("train", "test")),
    "rstpreid": FormatSpec("data_captions.json", "img_path", ("train", "val", "test")),
}
# Identities / images / captions per split as published (CUHK-PEDES: Li et al., CVPR 2017, and the
# split IRRA uses; ICFG-PEDES: Ding et al., 2021; RSTPReid: Zhu et al., 2021). reid-data compares.
PUBLISHED: dict[str, dict[str, tuple[int, int, int]]] = {
    "cuhk_pedes": {"train": (11003, 34054, 68126), "val": (1000, 3078, 6158), "test": (1000, 3074, 6156)},
    "icfg_pedes": {"train": (3102, 34674, 34674), "test": (1000, 19848, 19848)},
    "rstpreid": {"train": (3701, 18505, 37010), "val": (200, 1000, 2000), "test": (200, 1000, 2000)},
}
IMAGE_DIR = "imgs"


@dataclass
class Record:
    """One annotated image. ``id_captions`` / ``cloth_captions`` are None where not given."""

    index: int  # position in the annotation file (error messages, stable ordering)
    split: str
    pid: int  # the identity as written in the file
    file_path: str  # relative to root/imgs
    captions: list[str]
    id_captions: Optional[list[str]] = None
    cloth_captions: Optional[list[str]] = None


def format_spec(dataset: str) -> FormatSpec:
    if dataset not in FORMATS:
        raise DataError(f"unknown dataset {dataset!r} (known: {', '.join(FORMATS)})")
    return FORMATS[dataset]


def annotation_path(root: str | Path, dataset: str) -> Path:
    """The dataset's annotation file under ``root``: the first of its names that exists (the
    primary name when none does, for messages)."""
    spec = format_spec(dataset)
    for name in (spec.annotation, *spec.alternatives):
        if (Path(root) / name).is_file():
            return Path(root) / name
    return Path(root) / spec.annotation


def _missing_annotation(root: Path, dataset: str) -> DataError:
    spec = format_spec(dataset)
    expected = " or ".join((spec.annotation, *spec.alternatives))
    found = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix == ".json")
    here = f"found {', '.join(found[:6])}" if found else "found no .json file there"
    others = [name for name, other in FORMATS.items() if other is not spec and any(
        (root / n).is_file() for n in (other.annotation, *other.alternatives))]
    hint = f" (the layout of dataset {others[0]!r})" if others else ""
    return DataError(f"{root}: no annotation file for dataset {dataset!r}: expected {expected}; {here}{hint}")


def image_dir(root: str | Path) -> Path:
    return Path(root) / IMAGE_DIR


def read_annotations(root: str | Path, dataset: str) -> list[Record]:
    """Read and validate ``root``'s annotation file; returns the records in file order."""
    root = Path(root)
    spec = format_spec(dataset)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    path = annotation_path(root, dataset)
    if not path.is_file():
        raise _missing_annotation(root, dataset)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: the top level must be a list of records, got {type(raw).__name__}")
    if not raw:
        raise DataError(f"{path}: no records")
    records = [_parse_record(path, i, item, spec) for i, item in enumerate(raw)]
    _check_consistency(path, records)
    return records


def _parse_record(path: Path, index: int, item: Any, spec: FormatSpec) -> Record:
    where = f"{path}: record {index}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object, got {type(item).__name__}")
    file_path = item.get(spec.path_key)
    if file_path is None:
        raise DataError(f"{where}: missing '{spec.path_key}'")
    if not isinstance(file_path, str) or not file_path.strip():
        raise DataError(f"{where}: '{spec.path_key}' must be a non-empty string, got {file_path!r}")
    where = f"{path}: record {index} ({file_path})"
    for key in ("id", "captions") + (() if spec.split_by_id else ("split",)):
        if key not in item:
            raise DataError(f"{where}: missing '{key}'")
    pid = item["id"]
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise DataError(f"{where}: 'id' must be an integer, got {pid!r}")
    split = item["split"] if "split" in item else _standard_split(where, pid, spec)
    if split not in spec.splits:
        raise DataError(f"{where}: unknown split {split!r} (this dataset has {', '.join(spec.splits)})")
    captions = item["captions"]
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise DataError(f"{where}: 'captions' must be a list of strings")
    if not captions:
        raise DataError(f"{where}: 'captions' is empty")
    for k, caption in enumerate(captions):
        if not caption.strip():
            raise DataError(f"{where}: caption {k} is empty")
    return Record(
        index=index,
        split=split,
        pid=pid,
        file_path=file_path,
        captions=captions,
        id_captions=_optional_parts(where, item, "id_caption", len(captions)),
        cloth_captions=_optional_parts(where, item, "cloth_caption", len(captions)),
    )


def _standard_split(where: str, pid: int, spec: FormatSpec) -> str:
    """The split of a record without 'split', by identity (the dataset's standard split)."""
    for split, first, last in spec.split_by_id:
        if first <= pid <= last:
            return split
    lo, hi = spec.split_by_id[0][1], spec.split_by_id[-1][2]
    raise DataError(
        f"{where}: no 'split', and id {pid} is outside the standard split's ids {lo}-{hi}; "
        "add a 'split' field (train / val / test) to every record"
    )


def _optional_parts(where: str, item: dict, key: str, num: int) -> Optional[list[str]]:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return [value] * num
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if len(value) != num:
            raise DataError(f"{where}: '{key}' has {len(value)} entries but 'captions' has {num}")
        return list(value)
    raise DataError(f"{where}: '{key}' must be a string or a list of strings aligned with 'captions'")


def _check_consistency(path: Path, records: Sequence[Record]) -> None:
    by_path: dict[str, Record] = {}
    split_of_pid: dict[int, Record] = {}
    for rec in records:
        where = f"{path}: record {rec.index} ({rec.file_path})"
        first = by_path.setdefault(rec.file_path, rec)
        if first.pid != rec.pid or first.split != rec.split:
            raise DataError(
                f"{where}: the same image is listed by record {first.index} with id {first.pid} / "
                f"split {first.split!r}, here with id {rec.pid} / split {rec.split!r}"
            )
        owner = split_of_pid.setdefault(rec.pid, rec)
        if owner.split != rec.split:
            raise DataError(
                f"{where}: identity {rec.pid} is in split {rec.split!r} here and in split "
                f"{owner.split!r} at record {owner.index} (splits must not share identities)"
            )


def check_image_files(path: Path, records: Iterable[Record], images: Path) -> None:
    """Every record's image exists (a stat per record: cheap enough to run on every table build)."""
    if not images.is_dir():
        raise DataError(f"{images}: image directory not found")
    for rec in records:
        if not (images / rec.file_path).is_file():
            raise DataError(f"{path}: record {rec.index} ({rec.file_path}): image file not found under {images}")


def check_images_decode(path: Path, records: Iterable[Record], images: Path) -> None:
    """Decode every image fully (slow: one read per image); the first unreadable one raises."""
    from reid.data.transforms import load_image

    for rec in records:
        try:
            load_image(images / rec.file_path)
        except OSError as exc:
            raise DataError(f"{path}: record {rec.index} ({rec.file_path}): unreadable image ({exc})") from None


def split_records(records: Iterable[Record], split: str) -> list[Record]:
    return [r for r in records if r.split == split]


def summarize(records: Sequence[Record], dataset: str) -> dict[str, dict[str, int]]:
    """Identities / images / captions per split, for every split the dataset defines."""
    out = {}
    for split in format_spec(dataset).splits:
        part = split_records(records, split)
        out[split] = {
            "identities": len({r.pid for r in part}),
            "images": len(part),
            "captions": sum(len(r.captions) for r in part),
        }
    return out
