"""Time ``reid.data.synth.generate`` for a few dataset sizes and worker counts; extrapolate to 10,000 ids.

    python bench/synth_speed.py                          # 100 and 1,000 ids, 1 worker and all cores
    python bench/synth_speed.py --num-ids 100 1000 10000 --workers 8
    python bench/synth_speed.py --image-size 256 128

Each run writes into a fresh temporary directory (deleted afterwards), so nothing is reused between
runs; the time covers rendering, JPEG encoding, captions, the JSON files and the final rename. The
10,000-id estimate scales the largest measured run linearly (the work is per identity).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from reid.data.synth import generate


def _disk_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def measure(num_ids: int, workers: int, image_size: tuple[int, int], root: Path) -> dict:
    """Seconds, images, images/s and MiB on disk of one generation from scratch."""
    out = root / f"n{num_ids}-w{workers}"
    start = time.perf_counter()
    counts = generate(out, num_ids, seed=0, image_size=image_size, workers=workers)
    seconds = time.perf_counter() - start
    images = sum(c["images"] for c in counts.values())
    result = {"num_ids": num_ids, "workers": workers, "seconds": seconds, "images": images,
              "images_per_s": images / seconds, "mib": _disk_mib(out)}
    shutil.rmtree(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-ids", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 1}))
    parser.add_argument("--image-size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, image size: {tuple(args.image_size)}")
    header = ("ids", "workers", "images", "seconds", "images/s", "MiB", "10k ids (est.)")
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, (6, 7, 7, 8, 9, 7, 15))))
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as root:
        for num_ids in args.num_ids:
            for workers in args.workers:
                r = measure(num_ids, workers, tuple(args.image_size), Path(root))
                est = r["seconds"] * 10_000 / num_ids
                print(f"{num_ids:>6} {workers:>7} {r['images']:>7} {r['seconds']:>8.2f} "
                      f"{r['images_per_s']:>9.0f} {r['mib']:>7.1f} {est:>13.0f} s")


if __name__ == "__main__":
    main()
