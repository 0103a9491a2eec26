"""``reid-search``: find the person a sentence describes in a gallery of images.

    reid-search --checkpoint runs/<run>/best --gallery DIR|synthetic --query "a woman in a red coat"
        [--mode standard|clothing-invariant] [--top-k 10] [--out results.png] [--split test] [--pid PID]
        [--cache-dir DIR]

``--mode standard`` compares the whole description (its identity part with the images' identity
embeddings plus its clothing part with their clothing embeddings); ``--mode clothing-invariant``
only the identity part (what the person looks like, whatever they wear now). See reid.retrieval.

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
from reid.errors import ReidError, report_user_errors
from reid.retrieval import gallery_rows, standard_form

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
BATCH_SIZE = 64
CACHE_VERSION = 2  # 2: identity and clothing embeddings


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
        if any((root / file).is_file() for file in (fmt.annotation, *fmt.alternatives)):
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


# identity, and where the model has them: clothing, identity through the clothing eraser
GALLERY_FIELDS = ("image_embeds", "cloth_image_embeds", "invariant_image_embeds")


@torch.no_grad()
def encode_gallery(model: torch.nn.Module, paths: Sequence[Path], meta: dict, device: torch.device) -> tuple[dict[str, torch.Tensor], list[int], list[str]]:
    """Embeddings ``{field: (N', E)}`` of the readable images (:data:`GALLERY_FIELDS` the model
    has), their indices in ``paths`` and one message per unreadable image."""
    from reid.data.transforms import EvalTransform, load_image, pixel_stats

    transform = EvalTransform(meta["image_size"], *pixel_stats(recorded=(meta.get("pixel_mean"), meta.get("pixel_std"))))
    embeds: dict[str, list[torch.Tensor]] = {}
    kept, errors = [], []
    for start in range(0, len(paths), BATCH_SIZE):
        images = []
        for i in range(start, min(start + BATCH_SIZE, len(paths))):
            try:
                images.append(transform(load_image(paths[i])))
                kept.append(i)
            except OSError as exc:
                errors.append(f"{paths[i]}: {exc}")
        if images:
            out = model({keys.IMAGES: torch.stack(images).to(device)})
            for name in GALLERY_FIELDS:
                if name in out:
                    embeds.setdefault(name, []).append(out[name].float().cpu())
    return {name: torch.cat(parts) for name, parts in embeds.items()}, kept, errors


def cached_gallery_embeds(
    model: torch.nn.Module, checkpoint: Path, gallery: Gallery, meta: dict, cache_dir: Path, device: torch.device,
) -> tuple[dict[str, torch.Tensor], list[int], list[str], bool]:
    """(embeds, kept indices, unreadable-image messages, from_cache), read from or written to the cache."""
    path = cache_dir / "search" / f"{cache_key(checkpoint, gallery.paths)}.safetensors"
    if path.is_file():
        try:
            tensors, info = load_file(str(path)), _metadata(path)
            kept = tensors.pop("kept").tolist()
            if "image_embeds" in tensors:
                return tensors, kept, json.loads(info["errors"]), True
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is rebuilt below
    embeds, kept, errors = encode_gallery(model, gallery.paths, meta, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {name: t.contiguous() for name, t in embeds.items()}
    save_file({**tensors, "kept": torch.tensor(kept, dtype=torch.int64)}, str(tmp),
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


def _token_ids(tokenizer: Any, text: str, max_length: int) -> tuple[list[int], list[str]]:
    """Token ids of ``text`` and the words the vocabulary does not know."""
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    # b > a: a CLIP tokenizer's unknown token is <|endoftext|>, which it also adds (at an empty span)
    unknown = [text[a:b] for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == tokenizer.unk_token_id and b > a]
    return enc["input_ids"], unknown


@dataclass
class Query:
    """A query as the chosen mode compares it."""

    vector: torch.Tensor  # (E,) or (2E,) for the composed standard score
    mode: str  # standard | clothing_invariant
    form: str  # the standard mode's score: composed | full
    id_part: str  # the identity part the splitter found ("" when the mode reads the whole caption)
    cloth_part: str  # the clothing part ("" when the mode does not read it, or there is none)
    unknown: list[str]  # words the vocabulary does not know


@torch.no_grad()
def encode_query(
    model: torch.nn.Module, tokenizer: Any, query: str, max_length: int, device: torch.device,
    mode: str = "standard", form: str = "composed",
) -> Query:
    """The query's vector for ``mode`` (see reid.retrieval): the whole caption, its identity part,
    or [identity part; clothing part] for the composed standard score (``form`` is what the
    gallery supports: :func:`reid.retrieval.standard_form`)."""
    from reid.data.captions import split_caption

    text = query.strip()
    if not text:
        raise SearchError("the query is empty: describe the person, e.g. --query \"a woman in a red coat and black trousers\"")
    id_part, cloth_part = split_caption(text)
    if mode == "standard" and form == "full":
        parts = {"full": text}
    elif mode == "standard":
        parts = {"id": id_part, "cloth": cloth_part}
    else:
        parts = {"id": id_part}
    ids, unknown = _token_ids(tokenizer, text, max_length)
    if not any(t not in tokenizer.all_special_ids for t in ids):  # [UNK] is special too
        raise SearchError(f"none of the query's words are in the model's vocabulary ({', '.join(unknown[:8])})")
    vectors = {}
    for name, part in parts.items():
        if not part:  # no clothing part: the composed score is the identity score alone
            continue
        ids, _ = _token_ids(tokenizer, part, max_length)
        batch = {keys.INPUT_IDS: torch.tensor([ids], device=device), keys.ATTENTION_MASK: torch.ones(1, len(ids), dtype=torch.long, device=device)}
        out = model(batch)
        key = "cloth_text_embeds" if name == "cloth" and "cloth_text_embeds" in out else "text_embeds"
        vectors[name] = out[key][0].float().cpu()
    width = next(iter(vectors.values())).shape[0]
    vector = torch.cat([vectors.get(name, torch.zeros(width)) for name in parts])
    return Query(vector, mode, form, id_part if "id" in parts else "", parts.get("cloth", ""), unknown)


# --------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------


@dataclass
class Hit:
    path: Path
    score: float  # the mode's score: a cosine, or the sum of two for the composed standard score
    pid: Optional[int]  # the image's person, in a labelled gallery


def rank_gallery(query: torch.Tensor, embeds: torch.Tensor, top_k: int) -> list[tuple[int, float]]:
    """(row of ``embeds``, score) of the best ``top_k``, best first."""
    from reid.metrics import topk_indices

    scores, order = topk_indices(query[None], embeds, top_k)  # (1, top_k)
    return [(int(i), float(s)) for i, s in zip(order[0], scores[0])]


HELP = """Find the person a sentence describes in a gallery of images, with an exported reid model.

Prints the top-k images, best first, with their scores, and writes a picture of them (--out).

The score: in --mode clothing-invariant, the cosine between the sentence's identity part and the
image's identity embedding (-1..1); in --mode standard, the cosine of the identity parts plus the
cosine of the clothing parts (-2..2; a sentence without a clothing part scores identity alone), or
one cosine of the whole sentence for a model without a clothing embedding.

Hits: when the gallery is a labelled dataset split and the query's person is known, each image is
framed green (that person) or red (someone else). The person is known from --pid, or when the
query is one of the split's own captions (copied from its annotation file).

The gallery: a folder of images (searched recursively, no labels), a dataset root in a supported
annotation format (--split picks its images), or 'synthetic' (the model's generated dataset).
Gallery embeddings are cached, so a second query over the same gallery only encodes the sentence.

example:
  reid-search --checkpoint runs/run/best --gallery synthetic \\
      --query "A tall young man with short black hair in a red jacket and grey trousers." \\
      --mode clothing-invariant --top-k 5 --out results.png
"""


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reid-search", description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="an exported model: <run>/best or <run>/final")
    parser.add_argument("--gallery", required=True, help="a folder of images, a dataset root, or 'synthetic'")
    parser.add_argument("--query", required=True, help="the sentence describing the person")
    parser.add_argument("--top-k", type=int, default=10, help="images to list and draw (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("results.png"), help="the picture (default: %(default)s)")
    parser.add_argument("--split", default="test", help="split of a dataset gallery (default: %(default)s)")
    parser.add_argument("--pid", type=int, default=None, help="the query's person in a labelled gallery (frames the hits)")
    parser.add_argument("--mode", choices=("standard", "clothing-invariant"), default="standard",
                        help="standard: the whole description (identity and clothing); clothing-invariant: only "
                             "the identity part, against the images' identity embeddings (default: %(default)s)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="gallery embedding cache (default: $REID_CACHE or ~/.cache/reid)")
    return parser.parse_args(argv)


@dataclass
class SearchResult:
    query: Query
    gallery: Gallery
    hits: list[Hit]
    num_searched: int  # readable gallery images
    from_cache: bool  # gallery embeddings came from the cache
    warnings: list[str]


def search(
    checkpoint: str | Path, gallery: str, query: str, *, mode: str = "standard", top_k: int = 10,
    split: str = "test", cache_dir: Optional[Path] = None,
    device: Optional[torch.device] = None,
) -> SearchResult:
    """The Python API: rank the images of ``gallery`` (a folder, a dataset root or ``synthetic``)
    for the sentence ``query`` with the exported model at ``checkpoint``; ``mode`` is ``standard``
    or ``clothing_invariant`` (``clothing-invariant`` is accepted too). Raises SearchError (a
    ReidError) for a user mistake."""
    from reid.export import load_exported

    mode = mode.replace("-", "_")
    if mode not in ("standard", "clothing_invariant"):
        raise SearchError(f"mode {mode!r}: use standard or clothing-invariant")
    if not query.strip():  # before loading anything
        raise SearchError("the query is empty: describe the person, e.g. --query \"a woman in a red coat and black trousers\"")
    if top_k < 1:
        raise SearchError(f"--top-k must be >= 1, got {top_k}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    checkpoint = Path(checkpoint)
    model, tokenizer, cfg, meta = load_exported(checkpoint, device)
    where = resolve_gallery(gallery, cfg.data, split)
    embeds, kept, errors, cached = cached_gallery_embeds(model, checkpoint, where, meta, cache_dir or default_cache_dir(), device)
    warnings = []
    if errors:
        warnings.append(f"skipped {len(errors)} unreadable image(s) of {len(where.paths)} (first: {errors[0]})")
    if not kept:
        raise SearchError(f"{where.root}: none of the {len(where.paths)} gallery images could be read")
    form = standard_form(cfg.eval.standard, embeds)
    encoded = encode_query(model, tokenizer, query, cfg.data.text_max_length, device, mode, form)
    if encoded.unknown:
        warnings.append(f"words the model does not know (ignored): {', '.join(encoded.unknown)}")
    rows = rank_gallery(encoded.vector.to(device), gallery_rows(embeds, mode, form).to(device), top_k)
    hits = [Hit(where.paths[kept[i]], score, where.pids[kept[i]] if where.pids else None) for i, score in rows]
    return SearchResult(encoded, where, hits, len(kept), cached, warnings)


def score_meaning(mode: str, form: str) -> str:
    """What a hit's score is, in words (the grid's note)."""
    if mode == "standard" and form == "composed":
        return "cosine of identity parts + cosine of clothing parts"
    if mode == "standard":
        return "cosine of the whole sentence"
    return "cosine of the identity part"


@report_user_errors
def main(argv: Optional[list[str]] = None) -> int:
    """Search, print the ranking, write the picture; exit status 2 on a user error."""
    from reid.search_grid import Tile, render_grid

    args = parse_args(argv)
    result = search(args.checkpoint, args.gallery, args.query, mode=args.mode, top_k=args.top_k, split=args.split,
                    cache_dir=args.cache_dir)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    gallery, hits = result.gallery, result.hits
    pid = _query_pid(args, gallery)
    _print(args.query, result.query, gallery, hits, pid, result.from_cache)
    tiles = [Tile(h.path, r, h.score, _name(h.path, gallery.root), None if pid is None else h.pid == pid)
             for r, h in enumerate(hits, start=1)]
    notes = [f"top {len(hits)} of {result.num_searched} {gallery.description} · {args.mode} mode",
             f"score = {score_meaning(result.query.mode, result.query.form)}", f"model {args.checkpoint}"]
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


def _print(text: str, query: Query, gallery: Gallery, hits: list[Hit], pid: Optional[int], cached: bool) -> None:
    who = f" (person {pid})" if pid is not None else ""
    print(f"query: {text.strip()!r}{who}")
    if query.mode == "clothing_invariant":
        print(f"mode: clothing-invariant, compares the identity part {query.id_part!r}")
    elif query.form == "composed":
        print(f"mode: standard, identity part {query.id_part!r} + clothing part {query.cloth_part!r}")
    else:
        print("mode: standard, the whole caption")
    print(f"gallery: {len(gallery.paths)} {gallery.description}" + (" (embeddings from cache)" if cached else ""))
    print(f"{'rank':>4}  {'score':>6}  path")
    for r, h in enumerate(hits, start=1):
        label = "" if h.pid is None else f"  [person {h.pid}" + ("" if pid is None else (", hit" if h.pid == pid else "")) + "]"
        print(f"{r:>4}  {h.score:6.3f}  {h.path}{label}")


if __name__ == "__main__":
    sys.exit(main())
