"""``reid-search``: find the person a sentence describes in a gallery of images.

    reid-search --checkpoint runs/<run>/best --gallery DIR|synthetic --query "a woman in a red coat"
        [--top-k 10] [--out results.png] [--split test] [--pid PID] [--rerank-topk K] [--cache-dir DIR]

The gallery is a folder of images (searched recursively, no annotations needed), a dataset root in
one of the supported annotation formats (``--split`` picks its images; the identities are then
known), or ``synthetic`` (the synthetic dataset of the model's config). Prints the ranked image
paths with their cosine scores and writes a picture of the top k; when the gallery is labelled and
the query's person is known (``--pid``, or the query is one of the split's captions), each image
gets a green (same person) or red (another person) frame.

Gallery embeddings are cached in ``<cache>/search/<key>.safetensors`` (``--cache-dir``, else
``$REID_CACHE``, else ``~/.cache/reid``); the key hashes the export's weight files (names, sizes,
mtimes, its reid_model.json) and the sorted gallery file list with sizes and mtimes, so a second
query over the same gallery only encodes the sentence.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from reid.data import keys
from reid.errors import DataError, ReidError, report_user_errors

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
BATCH_SIZE = 64
CACHE_VERSION = 1


class SearchError(ReidError):
    """A search that cannot run: an empty query, a gallery without images."""


@dataclass
class Gallery:
    root: Path
    paths: list[Path]  # absolute, sorted
    pids: Optional[list[int]]  # identities when the gallery is an annotated dataset split
    captions: dict[str, int]  # caption -> pid of the split (to recognise a query taken from it)
    description: str  # "test images of ROOT", "images in DIR"


# --------------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------------


def resolve_gallery(spec: str, data_cfg: Any, split: str) -> Gallery:
    """A folder of images, an annotated dataset root (its ``split``), or ``synthetic``."""
    from reid.data import prepare_root
    from reid.data.formats import FORMATS

    if spec == "synthetic":
        return _dataset_gallery(prepare_root(replace(data_cfg, root="")), "cuhk_pedes", split)
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise SearchError(f"{root}: --gallery must be a directory of images, a dataset root or 'synthetic'")
    for name, fmt in FORMATS.items():
        if (root / fmt.annotation).is_file():
            return _dataset_gallery(root.resolve(), name, split)
    paths = sorted(p.resolve() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise SearchError(f"{root}: no images in this folder or below it (looked for {suffixes})")
    return Gallery(root.resolve(), paths, None, {}, f"images in {root}")


def _dataset_gallery(root: Path, dataset: str, split: str) -> Gallery:
    from reid.data.formats import image_dir, read_annotations, split_records

    records = split_records(read_annotations(root, dataset), split)
    if not records:
        raise SearchError(f"{root}: the {dataset} annotations have no images in split {split!r} (--split)")
    by_path = {str((image_dir(root) / r.file_path).resolve()): r.pid for r in records}
    paths = sorted(Path(p) for p in by_path)
    captions = {c.strip(): r.pid for r in records for c in r.captions}
    pids = [by_path[str(p)] for p in paths]
    return Gallery(image_dir(root).resolve(), paths, pids, captions, f"{split} images of {root}")


def cache_key(checkpoint: Path, paths: Sequence[Path]) -> str:
    """Hash of the export's weights (file names, sizes, mtimes, reid_model.json) and the gallery files."""
    from reid.export import INDEX

    model = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(checkpoint.glob("*.safetensors"))]
    model.append((checkpoint / "reid_model.json").read_text())
    model.append((checkpoint / INDEX).read_text())
    files = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    text = json.dumps({"version": CACHE_VERSION, "model": model, "files": files})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def default_cache_dir() -> Path:
    return Path(os.environ.get("REID_CACHE") or Path.home() / ".cache" / "reid").expanduser()


@torch.no_grad()
def encode_gallery(model: torch.nn.Module, paths: Sequence[Path], meta: dict, device: torch.device) -> tuple[torch.Tensor, list[int], list[str]]:
    """Embeddings (N', E) of the readable images, their indices in ``paths`` and one message per
    unreadable image."""
    from reid.data.transforms import DEFAULT_MEAN, DEFAULT_STD, EvalTransform, load_image

    transform = EvalTransform(meta["image_size"], meta.get("pixel_mean") or DEFAULT_MEAN, meta.get("pixel_std") or DEFAULT_STD)
    embeds, kept, errors = [], [], []
    for start in range(0, len(paths), BATCH_SIZE):
        images = []
        for i in range(start, min(start + BATCH_SIZE, len(paths))):
            try:
                images.append(transform(load_image(paths[i])))
                kept.append(i)
            except OSError as exc:
                errors.append(f"{paths[i]}: {exc}")
        if images:
            embeds.append(model({keys.IMAGES: torch.stack(images).to(device)})["image_embeds"].float().cpu())
    width = embeds[0].shape[1] if embeds else 1
    return (torch.cat(embeds) if embeds else torch.zeros(0, width)), kept, errors


def cached_gallery_embeds(
    model: torch.nn.Module, checkpoint: Path, gallery: Gallery, meta: dict, cache_dir: Path, device: torch.device,
) -> tuple[torch.Tensor, list[int], list[str], bool]:
    """(embeds, kept indices, unreadable-image messages, from_cache), read from or written to the cache."""
    path = cache_dir / "search" / f"{cache_key(checkpoint, gallery.paths)}.safetensors"
    if path.is_file():
        try:
            tensors, info = load_file(str(path)), _metadata(path)
            return tensors["embeds"], tensors["kept"].tolist(), json.loads(info["errors"]), True
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is rebuilt below
    embeds, kept, errors = encode_gallery(model, gallery.paths, meta, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"embeds": embeds.contiguous(), "kept": torch.tensor(kept, dtype=torch.int64)}, str(tmp),
              metadata={"errors": json.dumps(errors), "root": str(gallery.root)})
    os.replace(tmp, path)  # atomic: a concurrent search never reads half a file
    return embeds, kept, errors, False


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


# --------------------------------------------------------------------------------------------------
# Query
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_query(model: torch.nn.Module, tokenizer: Any, query: str, max_length: int, device: torch.device) -> tuple[torch.Tensor, list[str]]:
    """The query's embedding (E,) and the words the vocabulary does not know."""
    text = query.strip()
    if not text:
        raise SearchError("the query is empty: describe the person, e.g. --query \"a woman in a red coat and black trousers\"")
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    unknown = [text[a:b] for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == tokenizer.unk_token_id]
    known = [t for t in enc["input_ids"] if t not in tokenizer.all_special_ids]  # [UNK] is special too
    if unknown and not known:
        raise SearchError(f"none of the query's words are in the model's vocabulary ({', '.join(unknown[:8])})")
    ids = torch.tensor([enc["input_ids"]], device=device)
    batch = {keys.INPUT_IDS: ids, keys.ATTENTION_MASK: torch.ones_like(ids)}
    return model(batch)["text_embeds"][0].float().cpu(), unknown


# --------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------


@dataclass
class Hit:
    path: Path
    score: float  # cosine similarity of the dual encoder
    pid: Optional[int]  # the image's person, in a labelled gallery
    match: Optional[float] = None  # fusion-head logit, for re-ranked candidates


def rank_gallery(model: torch.nn.Module, query: torch.Tensor, embeds: torch.Tensor, top_k: int, rerank_topk: int = 0) -> list[tuple[int, float, Optional[float]]]:
    """(row of ``embeds``, cosine, fusion logit or None) of the best ``top_k``; with ``rerank_topk``
    the first ``rerank_topk`` are re-ordered by the fusion head."""
    from reid.metrics import topk_indices
    from reid.rerank import score_pairs

    depth = max(top_k, rerank_topk)
    scores, order = topk_indices(query[None], embeds, depth)  # (1, depth)
    rows = [(int(i), float(s), None) for i, s in zip(order[0], scores[0])]
    if rerank_topk:
        head = rows[:rerank_topk]
        picked = embeds[torch.tensor([r[0] for r in head], device=embeds.device)]  # (k, E)
        logits = score_pairs(model, picked, query[None].expand(len(head), -1), None).tolist()
        best = sorted(range(len(head)), key=lambda j: -logits[j])  # stable: ties keep the cosine order
        rows[: len(head)] = [(head[j][0], head[j][1], logits[j]) for j in best]
    return rows[:top_k]


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reid-search", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="an exported model: <run>/best or <run>/final")
    parser.add_argument("--gallery", required=True, help="a folder of images, a dataset root, or 'synthetic'")
    parser.add_argument("--query", required=True, help="the sentence describing the person")
    parser.add_argument("--top-k", type=int, default=10, help="images to list and draw (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results.png"), help="the picture (default: %(default)s)")
    parser.add_argument("--split", default="test", help="split of a dataset gallery (default: %(default)s)")
    parser.add_argument("--pid", type=int, default=None, help="the query's person in a labelled gallery (frames the hits)")
    parser.add_argument("--rerank-topk", type=int, default=None, help="re-order the top k with the fusion head (default: the model's eval.rerank_topk)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="gallery embedding cache (default: $REID_CACHE or ~/.cache/reid)")
    return parser.parse_args(argv)


@report_user_errors
def main(argv: Optional[list[str]] = None) -> int:
    """Search, print the ranking, write the picture; exit status 2 on a user error."""
    from reid.export import load_exported
    from reid.search_grid import Tile, render_grid

    args = parse_args(argv)
    if not args.query.strip():  # before loading anything
        raise SearchError("the query is empty: describe the person, e.g. --query \"a woman in a red coat and black trousers\"")
    if args.top_k < 1 or (args.rerank_topk or 0) < 0:
        raise SearchError(f"--top-k must be >= 1 and --rerank-topk >= 0, got {args.top_k} and {args.rerank_topk}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, cfg, meta = load_exported(args.checkpoint, device)
    rerank_topk = cfg.eval.rerank_topk if args.rerank_topk is None else args.rerank_topk
    if rerank_topk and model.fusion is None:
        raise SearchError(f"{args.checkpoint}: --rerank-topk needs a fusion head, and this model was trained with fusion_match = 0")
    gallery = resolve_gallery(args.gallery, cfg.data, args.split)
    embeds, kept, errors, cached = cached_gallery_embeds(
        model, args.checkpoint, gallery, meta, args.cache_dir or default_cache_dir(), device)
    if errors:
        print(f"warning: skipped {len(errors)} unreadable image(s) of {len(gallery.paths)} (first: {errors[0]})", file=sys.stderr)
    if not kept:
        raise SearchError(f"{gallery.root}: none of the {len(gallery.paths)} gallery images could be read")
    query, unknown = encode_query(model, tokenizer, args.query, cfg.data.text_max_length, device)
    if unknown:
        print(f"warning: words the model does not know (ignored): {', '.join(unknown)}", file=sys.stderr)
    hits = [Hit(gallery.paths[kept[i]], score, gallery.pids[kept[i]] if gallery.pids else None, match)
            for i, score, match in rank_gallery(model, query.to(device), embeds.to(device), args.top_k, rerank_topk)]
    pid = _query_pid(args, gallery)
    _print(args.query, gallery, hits, pid, cached, rerank_topk)
    tiles = [Tile(h.path, r, h.score, _name(h.path, gallery.root), None if pid is None else h.pid == pid, h.match)
             for r, h in enumerate(hits, start=1)]
    notes = [f"top {len(hits)} of {len(kept)} {gallery.description}",
             f"model {args.checkpoint}" + (f" · top {rerank_topk} re-ordered by the fusion head" if rerank_topk else "")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    render_grid(args.query.strip(), tiles, notes, pid).save(args.out)
    print(f"wrote {args.out}")
    return 0


def _query_pid(args: argparse.Namespace, gallery: Gallery) -> Optional[int]:
    if gallery.pids is None:
        if args.pid is not None:
            print("warning: --pid ignored: the gallery is a plain folder, its identities are unknown", file=sys.stderr)
        return None
    return args.pid if args.pid is not None else gallery.captions.get(args.query.strip())


def _name(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def _print(query: str, gallery: Gallery, hits: list[Hit], pid: Optional[int], cached: bool, rerank_topk: int) -> None:
    who = f" (person {pid})" if pid is not None else ""
    print(f"query: {query.strip()!r}{who}")
    print(f"gallery: {len(gallery.paths)} {gallery.description}" + (" (embeddings from cache)" if cached else ""))
    print(f"{'rank':>4}  {'score':>6}" + ("  match" if rerank_topk else "") + "  path")
    for r, h in enumerate(hits, start=1):
        match = "" if not rerank_topk else (f"  {h.match:5.2f}" if h.match is not None else "       ")
        label = "" if h.pid is None else f"  [person {h.pid}" + ("" if pid is None else (", hit" if h.pid == pid else "")) + "]"
        print(f"{r:>4}  {h.score:6.3f}{match}  {h.path}{label}")


if __name__ == "__main__":
    sys.exit(main())
