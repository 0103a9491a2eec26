"""Data preparation at scale: table build and hard negatives at 100k-1M captions; memory of 2 loader workers.

    python bench/prep_speed.py                                  # 100k, 300k, 1M captions
    python bench/prep_speed.py --sizes 20000 40000 --agreement 40000

Each size is measured in a fresh process (so its peak memory is its own): a CUHK-PEDES-format
corpus of that many captions (``reid.data.synth``'s people and caption generator, two captions per
record; text and paths only, one tiny image per person backing all its records), then
``reid.data.tables.build_tables`` with ``data.negatives: hard`` (read + validate the JSON, split
every caption, hard-negative candidates, tokenize, write arrow), timed in total and for the
hard-negative search alone, with the process's peak resident memory. The generated captions use a
small vocabulary (~100 clothing words); ``--rare-words N`` (default 8000) adds 0-3 words per
caption (as "The shirt has a <word> print.", which the splitter puts in the clothing part) drawn
from N made-up words with Zipf frequencies, so the vocabulary has a long tail like
CUHK-PEDES' (~12k words) and the approximate search's hashed coordinates are exercised.

``--agreement SIZE`` compares the approximate search with the exact one on a corpus of SIZE
captions: the share of the exact candidates it also returns (ties make the exact set one of
several equally good ones), and the mean TF-IDF cosine of its candidates to the row's caption
as a share of the exact candidates' (1.0 = as similar).

``--workers-at SIZE`` (default: the largest size; one of ``--sizes``) builds the training loader with 2 workers on
that corpus, draws 20 batches, and reports each worker's unique and proportional set size (USS /
PSS: what the worker itself holds beyond the pages it shares with the main process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_corpus(root: Path, captions: int, rare_words: int, seed: int = 0) -> int:
    """Write reid_raw.json + imgs/ under ``root`` with ``captions`` captions; returns the number of people."""
    from PIL import Image

    from reid.data.synth import sample_camera, sample_identity, sample_outfits
    from reid.data.synth_text import make_captions

    rng_words = np.random.default_rng(seed + 1)
    zipf = 1.0 / np.arange(1, rare_words + 1) if rare_words else None
    rare = [f"w{i:05d}x" for i in range(rare_words)]
    records, pid = [], 0
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    while len(records) * 2 < captions:
        pid += 1
        rng = np.random.default_rng([seed, pid])
        identity = sample_identity(rng)
        split = "test" if pid % 100 == 0 else "train"
        path = f"p{pid:07d}.jpg"
        for outfit in sample_outfits(rng, 3):
            for _ in range(3):
                texts = [text for text, _ in make_captions(identity, outfit, sample_camera(rng).facing, rng)]
                if rare_words:
                    for k, text in enumerate(texts):
                        extra = rng_words.choice(rare_words, size=int(rng_words.integers(0, 4)), p=zipf / zipf.sum())
                        texts[k] = text + "".join(f" The shirt has a {rare[int(w)]} print." for w in extra)
                records.append({"id": pid, "file_path": path, "captions": texts, "split": split})
        Image.new("RGB", (8, 16), (pid % 255, 90, 160)).save(root / "imgs" / path)
    (root / "reid_raw.json").write_text(json.dumps(records))
    return pid


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def corpus(size: int, rare_words: int, scratch: Path) -> dict:
    """Generate the ``size``-caption corpus (its own process: its memory is not the build's); a
    ``--scratch`` that already holds it with the same settings is reused."""
    root = scratch / f"corpus-{size}"
    marker = root / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text()).get("rare_words") == rare_words:
        return json.loads(marker.read_text())
    start = time.perf_counter()
    people = make_corpus(root, size, rare_words)
    report = {"captions": size, "people": people, "rare_words": rare_words,
              "generate_s": round(time.perf_counter() - start, 1)}
    marker.write_text(json.dumps(report))
    return report


def measure(size: int, rare_words: int, scratch: Path) -> dict:
    """One size, in this process: the table build with hard negatives on the generated corpus."""
    import reid.data.tables as tables_module
    from reid.config import DataConfig
    from reid.data.tokenizer import build_tokenizer

    root = scratch / f"corpus-{size}"
    people = len({r["id"] for r in json.loads((root / "reid_raw.json").read_text())})
    cache = scratch / f"cache-{size}"
    shutil.rmtree(cache, ignore_errors=True)  # a table build from scratch, every time
    cfg = DataConfig(root=str(root), cache_dir=str(cache), negatives="hard", hard_topk=5,
                     image_size=(16, 8), text_max_length=64)
    tokenizer = build_tokenizer(cfg, "")
    base_mb = _peak_mb()  # imports + tokenizer
    search = {"seconds": 0.0}
    inner = tables_module.hard_candidates

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        search["seconds"] += time.perf_counter() - t
        return out

    tables_module.hard_candidates = timed
    start = time.perf_counter()
    built = tables_module.build_tables(cfg, tokenizer)
    total = time.perf_counter() - start
    return {"captions": size, "people": people, "rows": len(built.train), "build_s": round(total, 1), "hard_negatives_s": round(search["seconds"], 1),
            "peak_mb": round(_peak_mb()), "peak_before_build_mb": round(base_mb)}


def agreement(size: int, rare_words: int, scratch: Path) -> dict:
    """Approximate against exact hard-negative candidates on one corpus."""
    from reid.data.captions import split_caption
    from reid.data.formats import read_annotations
    from reid.data.pairs import _TOKEN_RE, _tfidf, hard_candidates

    root = scratch / f"agree-{size}"
    make_corpus(root, size, rare_words)
    cloth, pids = [], []
    for rec in read_annotations(root, "cuhk_pedes"):
        if rec.split == "train":
            for caption in rec.captions:
                cloth.append(split_caption(caption)[1])
                pids.append(rec.pid)
    valid = [bool(c) for c in cloth]
    timings = {}
    out = {}
    for search in ("exact", "approximate"):
        t = time.perf_counter()
        out[search] = hard_candidates(cloth, pids, valid, 5, search=search)
        timings[search] = round(time.perf_counter() - t, 1)
    norm = lambda text: " ".join(_TOKEN_RE.findall(text.lower()))  # noqa: E731
    index: dict[str, int] = {}
    for text, ok in zip(cloth, valid):
        if ok:
            index.setdefault(norm(text), len(index))
    matrix = _tfidf(list(index)).to_sparse_coo()  # COO: rows can be selected
    rows = [r for r in np.random.default_rng(0).permutation(len(cloth))[:3000] if out["exact"][r]]

    def mean_cos(r: int, picks: list[int]) -> float:
        if not picks:
            return 0.0
        u = index[norm(cloth[r])]
        query = matrix.index_select(0, torch_tensor([u])).to_dense()[0]
        others = matrix.index_select(0, torch_tensor([index[norm(cloth[p])] for p in picks])).to_dense()
        return float((others @ query).mean())

    overlap = np.mean([len(set(out["exact"][r]) & set(out["approximate"][r])) / len(out["exact"][r]) for r in rows])
    exact_cos = np.mean([mean_cos(r, out["exact"][r]) for r in rows])
    approx_cos = np.mean([mean_cos(r, out["approximate"][r]) for r in rows])
    return {"captions": size, "unique_texts": len(index), "exact_s": timings["exact"],
            "approximate_s": timings["approximate"], "overlap": round(float(overlap), 3),
            "cosine_share": round(float(approx_cos / exact_cos), 4), "rows_compared": len(rows)}


def torch_tensor(values):
    import torch

    return torch.tensor(values, dtype=torch.int64)


def workers(size: int, rare_words: int, scratch: Path) -> dict:
    """USS / PSS of 2 loader workers after 20 batches on the ``size``-caption corpus."""
    import psutil

    from reid.config import DataConfig
    from reid.data.loader import build_train_data
    from reid.data.tokenizer import build_tokenizer

    root = scratch / f"corpus-{size}"  # generated, and its tables built, by the jobs before
    cfg = DataConfig(root=str(root), cache_dir=str(scratch / f"cache-{size}"), negatives="hard", hard_topk=5,
                     image_size=(16, 8), text_max_length=64, num_workers=2, batch_size=64, sampler="identity")
    tokenizer = build_tokenizer(cfg, "")
    data = build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=0)
    data.sampler.set_epoch(0)
    iterator = iter(data.loader)
    for _ in range(20):
        next(iterator)
    main = psutil.Process()
    report = {"captions": size, "main_rss_mb": round(main.memory_info().rss / 2**20)}
    for k, child in enumerate(main.children(recursive=True)):
        info = child.memory_full_info()
        report[f"worker{k}_uss_mb"] = round(info.uss / 2**20)
        report[f"worker{k}_pss_mb"] = round(info.pss / 2**20)
    del iterator
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--rare-words", type=int, default=8000)
    parser.add_argument("--agreement", type=int, default=40_000, help="corpus size for exact vs approximate (0: skip)")
    parser.add_argument("--workers-at", type=int, default=-1, help="corpus size for the loader-worker memory (0: skip)")
    parser.add_argument("--scratch", default="", help="default: a temporary directory")
    parser.add_argument("--one", choices=["corpus", "measure", "agreement", "workers"], help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child process: one measurement, one JSON line
        fn = {"corpus": corpus, "measure": measure, "agreement": agreement, "workers": workers}[args.one]
        print(json.dumps(fn(args.size, args.rare_words, Path(args.scratch))), flush=True)
        return
    workers_at = max(args.sizes) if args.workers_at < 0 else args.workers_at
    jobs = [(kind, s) for s in args.sizes for kind in ("corpus", "measure")]
    jobs += [("agreement", args.agreement)] if args.agreement else []
    jobs += [("workers", workers_at)] if workers_at else []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.scratch or tmp
        for kind, size in jobs:
            cmd = [sys.executable, __file__, "--one", kind, "--size", str(size), "--rare-words", str(args.rare_words),
                   "--scratch", scratch]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=dict(os.environ))
            if proc.returncode != 0:
                sys.exit(f"{kind} at {size}: failed\n{proc.stderr[-3000:]}")
            print(kind, proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
