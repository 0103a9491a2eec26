"""What ranking costs under the two evaluation protocols at CUHK-PEDES test size (6,156 captions x
3,074 images) and, with ``--icfg``, at ICFG-PEDES test size (19,848 x 19,848).

    python bench/eval_speed.py [--device cpu|cuda] [--icfg] [--repeat 3]

Embeddings are random L2-normalised 256-d vectors (1,000 identities, 3 outfits each). Timed (best
of ``--repeat``): ``retrieval_metrics`` under the standard protocol (every caption against every
image) and under the clothing-change protocol (outfit groups: a caption's own outfit is removed from
its gallery). Encoding the gallery and the captions is not included (it dominates, and depends on
the encoders: see ``seconds.encode`` in launch/evaluate.py's JSON).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from reid.evaluation import retrieval_metrics

SIZES = {"CUHK-PEDES": (6156, 3074), "ICFG-PEDES": (19848, 19848)}  # (queries, gallery images)
NUM_IDS, DIM = 1000, 256


def make_problem(num_queries: int, num_gallery: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gallery_pids = torch.arange(num_gallery) % NUM_IDS
    gallery_outfits = gallery_pids * 3 + torch.randint(0, 3, (num_gallery,), generator=g)
    pick = torch.randint(num_gallery, (num_queries,), generator=g)
    query = F.normalize(torch.randn(num_queries, DIM, generator=g), dim=1)
    gallery = F.normalize(torch.randn(num_gallery, DIM, generator=g), dim=1)
    tensors = (query, gallery, gallery_pids[pick], gallery_pids, gallery_outfits[pick], gallery_outfits)
    return tuple(t.to(device) for t in tensors)


def best_of(repeat: int, fn, device: torch.device) -> float:
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name: str, device: torch.device, repeat: int) -> None:
    num_queries, num_gallery = SIZES[name]
    q, g, qp, gp, q_out, g_out = make_problem(num_queries, num_gallery, device)
    print(f"{name}: {num_queries} queries x {num_gallery} images, {device} "
          f"({torch.get_num_threads()} threads), best of {repeat}")
    plain = best_of(repeat, lambda: retrieval_metrics(q, g, qp, gp), device)
    print(f"  standard ranking:         {plain:7.3f} s")
    grouped = best_of(repeat, lambda: retrieval_metrics(q, g, qp, gp, query_groups=q_out, gallery_groups=g_out), device)
    print(f"  clothing-change ranking:  {grouped:7.3f} s  ({len(q_out.unique())} outfit groups)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--icfg", action="store_true", help="also the ICFG-PEDES size (19,848 x 19,848)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    for name in ["CUHK-PEDES"] + (["ICFG-PEDES"] if args.icfg else []):
        bench(name, device, args.repeat)


if __name__ == "__main__":
    main()
