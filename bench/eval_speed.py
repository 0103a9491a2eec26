"""What fusion re-ranking costs at CUHK-PEDES test size (6,156 captions x 3,074 images), against
the plain dual-encoder ranking, and the clothing-change protocol's overhead.

    python bench/eval_speed.py [--device cpu|cuda] [--topk 10 50] [--repeat 3]

Embeddings are random L2-normalised 256-d vectors (1,000 identities, 3 outfits each); the fusion
head is the configured one (``model.fusion``: attention-gated, 256-d, 4 heads) with random
weights: its cost does not depend on training or on the encoders, so these figures hold for every
model size. Timed (best of ``--repeat``): ``retrieval_metrics`` plain; with outfit groups
(clothing-change); and re-ranked = candidate search + Q*k pair scores through ``model(batch)`` +
metrics. Encoding the gallery and the captions is not included (it dominates, and depends on the
encoders: see ``seconds.encode`` in launch/evaluate.py's JSON).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from reid.config import DisentangleConfig, ModelConfig
from reid.evaluation import retrieval_metrics
from reid.model import build_model
from reid.rerank import rerank

NUM_QUERIES, NUM_GALLERY, NUM_IDS, DIM = 6156, 3074, 1000, 256


def make_problem(device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gallery_pids = torch.arange(NUM_GALLERY) % NUM_IDS
    gallery_outfits = gallery_pids * 3 + torch.randint(0, 3, (NUM_GALLERY,), generator=g)
    pick = torch.randint(NUM_GALLERY, (NUM_QUERIES,), generator=g)
    query = F.normalize(torch.randn(NUM_QUERIES, DIM, generator=g), dim=1)
    gallery = F.normalize(torch.randn(NUM_GALLERY, DIM, generator=g), dim=1)
    tensors = (query, gallery, gallery_pids[pick], gallery_pids, gallery_outfits[pick], gallery_outfits)
    return tuple(t.to(device) for t in tensors)


class Single:
    """The accelerator interface rerank() uses, for one process."""

    num_processes, process_index = 1, 0

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def autocast(self):
        return torch.autocast(self.device.type, enabled=False)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--topk", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    dcfg = DisentangleConfig()
    dcfg.loss_weights.fusion_match = 0.5
    model = build_model(ModelConfig(), dcfg, num_classes=10, image_size=(64, 32), vocab_size=50).to(device).eval()
    q, g, qp, gp, q_out, g_out = make_problem(device)
    acc = Single(device)
    print(f"{NUM_QUERIES} queries x {NUM_GALLERY} images, {device} ({torch.get_num_threads()} threads), best of {args.repeat}")
    plain = best_of(args.repeat, lambda: retrieval_metrics(q, g, qp, gp), device)
    print(f"standard ranking:           {plain:7.3f} s")
    grouped = best_of(args.repeat, lambda: retrieval_metrics(q, g, qp, gp, query_groups=q_out, gallery_groups=g_out), device)
    print(f"clothing-change ranking:    {grouped:7.3f} s  ({len(q_out.unique())} outfit groups)")
    for k in args.topk:
        with torch.no_grad():
            scoring = best_of(args.repeat, lambda: rerank(model, q, g, k, acc), device)
            reranked = rerank(model, q, g, k, acc)
        total = scoring + best_of(args.repeat, lambda: retrieval_metrics(q, g, qp, gp, reranked=reranked), device)
        print(f"re-ranked top {k:<3}          {total:7.3f} s  (candidates + {NUM_QUERIES * k} pair scores "
              f"{scoring:.3f} s; {1000 * (total - plain) / NUM_QUERIES:.3f} ms/query over plain)")


if __name__ == "__main__":
    main()
