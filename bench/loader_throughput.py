"""Images per second of the training loader (decode + augment + collate) by workers and image size.

    python bench/loader_throughput.py                      # 0/1/2 workers x 224x224, 384x128
    python bench/loader_throughput.py --workers 0 4 8 --batches 40

Runs on the synthetic dataset (``reid.data.synth``), rendered at ``--source-size`` into a
scratch cache. The first batch of each setting (worker start-up) is not timed. The tokenizer is the
word-level one built for the data; texts do not change the image cost.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from reid.config import DataConfig, SynthConfig
from reid.data.loader import build_train_data
from reid.data.tokenizer import build_tokenizer


def _size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def measure(cfg: DataConfig, tokenizer, batches: int) -> float:
    """Images per second over ``batches`` batches (epochs chained) after one untimed batch."""
    data = build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=0)

    def stream():
        epoch = 0
        while True:
            data.sampler.set_epoch(epoch)
            yield from data.loader
            epoch += 1

    iterator = stream()
    next(iterator)
    start = time.perf_counter()
    count = sum(len(next(iterator)["pids"]) for _ in range(batches))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", nargs="+", default=["224x224", "384x128"], help="H x W fed to the model")
    parser.add_argument("--source-size", default="384x128", help="H x W of the rendered JPEGs")
    parser.add_argument("--num-ids", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per setting")
    parser.add_argument("--cache-dir", default="", help="default: a temporary directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or scratch
        synthetic = SynthConfig(num_ids=args.num_ids, image_size=_size(args.source_size))
        base = DataConfig(cache_dir=cache, synthetic=synthetic, batch_size=args.batch_size, sampler="random")
        tokenizer = build_tokenizer(base, "")
        print(f"source JPEGs {args.source_size}, batch {args.batch_size}, {args.batches} timed batches\n")
        print("| image size | workers | images/s |")
        print("|---|---|---|")
        for size in args.sizes:
            for workers in args.workers:
                cfg = DataConfig(**{**base.__dict__, "image_size": _size(size), "num_workers": workers})
                print(f"| {size} | {workers} | {measure(cfg, tokenizer, args.batches):.0f} |", flush=True)
        print(f"\ncache: {Path(cache)}")


if __name__ == "__main__":
    main()
