"""Time reid.metrics.rank on CUHK-PEDES and ICFG-PEDES sized test sets, with peak extra memory.

    python bench/metrics_speed.py          # CUHK size (6,156 x 3,074); CPU, and CUDA when present
    python bench/metrics_speed.py --icfg   # also the ICFG size (19,848 x 19,848)
    python bench/metrics_speed.py --device cpu --chunk-size 512

Embeddings are random L2-normalised 256-d vectors; 1,000 identities as in both test splits. Two
entry points are timed: ``rank`` on a precomputed similarity matrix (its memory is not counted)
and ``rank_from_embeddings``, which never builds the full matrix. "peak extra" is the allocator's
peak above the memory in use before the call (CUDA), or the peak resident set size above the one
before the call, sampled every millisecond (CPU; approximate, the allocator reuses freed memory).
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
from typing import Callable

import torch
import torch.nn.functional as F

from reid.metrics import rank, rank_from_embeddings

SIZES = {"CUHK-PEDES": (6156, 3074), "ICFG-PEDES": (19848, 19848)}  # (queries, gallery images)
NUM_IDS, DIM = 1000, 256


def make_problem(num_queries: int, num_gallery: int, device: torch.device, seed: int = 0):
    """Random normalised embeddings; every query's person has images in the gallery."""
    g = torch.Generator().manual_seed(seed)
    gallery_pids = torch.arange(num_gallery) % NUM_IDS  # (G,)
    query_pids = gallery_pids[torch.randint(num_gallery, (num_queries,), generator=g)]  # (Q,)
    query = F.normalize(torch.randn(num_queries, DIM, generator=g), dim=1)  # (Q, 256)
    gallery = F.normalize(torch.randn(num_gallery, DIM, generator=g), dim=1)  # (G, 256)
    return query.to(device), gallery.to(device), query_pids.to(device), gallery_pids.to(device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn: Callable[[], dict], device: torch.device) -> tuple[float, float, dict]:
    """(seconds, peak extra MiB, result) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = fn()  # returns Python floats: the call has finished on the device
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated(device) - before) / 2**20, result

    before, peak, done = _rss_bytes(), [0], threading.Event()

    def sample() -> None:  # the allocator frees large blocks at once, so RSS tracks the peak
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, (max(peak[0], _rss_bytes()) - before) / 2**20, result


def bench(name: str, device: torch.device, chunk_size: int) -> None:
    num_queries, num_gallery = SIZES[name]
    query, gallery, qpids, gpids = make_problem(num_queries, num_gallery, device)
    similarity = query @ gallery.T  # (Q, G), built before timing `rank`
    cases = {
        "rank(similarity)": lambda: rank(similarity, qpids, gpids, chunk_size=chunk_size),
        "rank_from_embeddings": lambda: rank_from_embeddings(
            query, gallery, qpids, gpids, chunk_size=chunk_size
        ),
    }
    for label, fn in cases.items():
        seconds, extra_mib, result = measure(fn, device)
        print(
            f"{name:10s} {num_queries:>6d} x {num_gallery:<6d} {device.type:4s} {label:21s} "
            f"chunk={chunk_size:<5d} {seconds:8.3f} s  peak extra {extra_mib:8.1f} MiB  "
            f"R1={result['R1']:.2f} mAP={result['mAP']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--icfg", action="store_true", help="also the 19,848 x 19,848 ICFG size")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto = CPU, plus CUDA when available")
    parser.add_argument("--chunk-size", type=int, default=1024)
    args = parser.parse_args()

    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    names = ["CUHK-PEDES"] + (["ICFG-PEDES"] if args.icfg else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for device in devices:
        # Warm-up: CUDA context, kernels and allocator pools should not count in the timings.
        q, g, qp, gp = make_problem(256, 512, device, seed=1)
        rank_from_embeddings(q, g, qp, gp, chunk_size=args.chunk_size)
        for name in names:
            bench(name, device, args.chunk_size)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(f"process peak RSS {peak_rss:.0f} MiB (includes the full similarity matrices)")


if __name__ == "__main__":
    main()
