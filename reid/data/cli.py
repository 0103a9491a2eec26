"""``reid-data``: validate a dataset and print its identities / images / captions per split.

    reid-data --data-root data/CUHK-PEDES --dataset cuhk_pedes
    reid-data --data-root data/ICFG-PEDES --dataset icfg_pedes --json --check-images

Checks the annotation file (every record, see :mod:`reid.data.formats`; CUHK-PEDES as
``reid_raw.json`` or as the download's ``caption_all.json``) and that every image file exists;
``--check-images`` also decodes every image. The ``with clothing`` column counts captions whose
clothing part is non-empty (the record's ``cloth_caption`` or the rule-based splitter); the
``published`` column compares each split's identities / images / captions with the dataset's
published counts (a subset or another release differs; that is reported, not an error).
A problem prints ``error: <file>: record <i> (<file_path>): <problem>`` on stderr and exits with
status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from reid.data.captions import split_caption
from reid.data.formats import (
    FORMATS,
    PUBLISHED,
    annotation_path,
    check_image_files,
    check_images_decode,
    image_dir,
    read_annotations,
    summarize,
)
from reid.errors import ReidError, report_user_errors


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise _ArgError(message)


def _with_clothing(records: list, split: str) -> int:
    count = 0
    for rec in records:
        if rec.split != split:
            continue
        for k, caption in enumerate(rec.captions):
            if rec.cloth_captions is not None:
                cloth = rec.cloth_captions[k].strip()
            else:
                cloth = split_caption(caption)[1]
            count += bool(cloth)
    return count


def inspect(root: str, dataset: str, check_images: bool = False) -> dict:
    """Validate the dataset at ``root``; returns its per-split counts (raises DataError)."""
    records = read_annotations(root, dataset)
    ann = annotation_path(root, dataset)
    check_image_files(ann, records, image_dir(root))
    if check_images:
        check_images_decode(ann, records, image_dir(root))
    splits = summarize(records, dataset)
    published = PUBLISHED.get(dataset, {})
    for split, counts in splits.items():
        counts["with_clothing"] = _with_clothing(records, split)
        if split in published:
            ids, images, captions = published[split]
            counts["published"] = {"identities": ids, "images": images, "captions": captions}
            counts["matches_published"] = (counts["identities"], counts["images"], counts["captions"]) == published[split]
    return {"dataset": dataset, "root": str(root), "annotation": str(ann), "splits": splits}


def _published_cell(c: dict) -> str:
    if "published" not in c:
        return "-"
    p = c["published"]
    if c["matches_published"]:
        return "matches"
    return f"differs ({p['identities']} / {p['images']} / {p['captions']})"


def _table(report: dict) -> str:
    lines = [f"{report['annotation']} ({report['dataset']})"]
    lines.append(f"{'split':<6} {'identities':>10} {'images':>8} {'captions':>9} {'with clothing':>14}  published")
    for split, c in report["splits"].items():
        lines.append(
            f"{split:<6} {c['identities']:>10} {c['images']:>8} {c['captions']:>9} {c['with_clothing']:>14}"
            f"  {_published_cell(c)}"
        )
    return "\n".join(lines)


@report_user_errors
def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``reid-data``; returns the exit status (0 ok, 2 bad input)."""
    parser = _Parser(prog="reid-data", description="Validate a dataset and print its counts per split.")
    parser.add_argument("--data-root", required=True, help="dataset directory (annotation file + imgs/)")
    parser.add_argument("--dataset", required=True, choices=sorted(FORMATS))
    parser.add_argument("--json", action="store_true", help="print the counts as JSON")
    parser.add_argument("--check-images", action="store_true", help="also decode every image (slow)")
    try:
        args = parser.parse_args(argv)
        report = inspect(args.data_root, args.dataset, args.check_images)
    except (_ArgError, ReidError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else _table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
