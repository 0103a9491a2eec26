"""Fusion re-ranking: re-score each query's top-k dual-encoder candidates with the pair-matching head.

The dual encoder ranks the whole gallery by cosine similarity. The fusion head (trained by the
``fusion_match`` term on matched vs. hard-negative (image, identity text) pairs) then scores the k
best pairs of every query, and those k are re-ordered by its logit (equal logits keep the
dual-encoder order); the rest of the ranking is unchanged. Re-ranking therefore changes R@1 .. R@k
and mAP / mINP, never R@k' for k' >= k.

Scoring goes through ``model(batch)`` with ``pair_image_embeds`` / ``pair_text_embeds`` (ZeRO-3 only
gathers weights inside ``forward``); the Q x k pairs are sharded contiguously over the processes
like the evaluation data, every process makes the same number of calls, and the scores are gathered
in rank order.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from reid.config import EvalConfig, LossWeights
from reid.errors import ConfigError
from reid.metrics import topk_indices
from reid.model.model import PAIR_IMAGE_EMBEDS, PAIR_TEXT_EMBEDS

PAIR_BATCH_SIZE = 1024  # pairs per forward call: each pair is two embeddings, so this is small


@dataclass
class Reranked:
    """Each query's candidates and their fusion-head logits."""

    indices: Tensor  # (Q, k) gallery indices, in dual-encoder order
    scores: Tensor  # (Q, k) fusion-head logits of (candidate image, query text)


def check_rerank(eval_cfg: EvalConfig, weights: LossWeights) -> None:
    """ConfigError when re-ranking is asked of a model that has no trained fusion head."""
    if eval_cfg.rerank_topk > 0 and weights.fusion_match <= 0:
        raise ConfigError(
            f"eval.rerank_topk: {eval_cfg.rerank_topk} re-ranks with the fusion head, which only "
            "disentangle.loss_weights.fusion_match > 0 trains; set one of them (rerank_topk=0 is off)"
        )


@torch.no_grad()
def candidates(
    query_embeds: Tensor,
    gallery_embeds: Tensor,
    k: int,
    *,
    query_groups: Optional[Tensor] = None,
    gallery_groups: Optional[Tensor] = None,
    chunk_size: int = 1024,
) -> Tensor:
    """Each query's ``min(k, G)`` most similar gallery indices ``(Q, k)``, in ranking order.

    With groups, gallery items of the query's own group are ranked last (the clothing-change
    protocol removes them), so they are candidates only when fewer than k items remain.
    """
    if query_groups is None:
        return topk_indices(query_embeds, gallery_embeds, k, chunk_size=chunk_size)[1]
    k = min(k, len(gallery_embeds))
    out = []
    for start in range(0, len(query_embeds), chunk_size):
        sim = query_embeds[start : start + chunk_size] @ gallery_embeds.T  # (c, G)
        removed = query_groups[start : start + chunk_size, None] == gallery_groups[None]  # (c, G)
        sim = sim.masked_fill(removed, float("-inf"))
        out.append(torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k].clone())
    return torch.cat(out)


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module,
    image_embeds: Tensor,
    text_embeds: Tensor,
    accelerator: Any,
    batch_size: int = PAIR_BATCH_SIZE,
) -> Tensor:
    """Fusion-head logits ``(P,)`` of the aligned pairs (row i with row i), on every process.

    Collective: every process passes the same pairs and scores its contiguous share of them.
    ``accelerator=None`` scores all pairs in this process (no autocast).
    """
    total = len(image_embeds)
    rank, world = (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    autocast = contextlib.nullcontext if accelerator is None else accelerator.autocast
    per_rank = math.ceil(total / world)
    # Padded with the last pair (as ShardSampler pads), so every process makes the same calls.
    mine = torch.arange(rank * per_rank, (rank + 1) * per_rank, device=image_embeds.device).clamp(max=max(total - 1, 0))
    scores = []
    for start in range(0, per_rank, batch_size):
        idx = mine[start : start + batch_size]
        batch = {PAIR_IMAGE_EMBEDS: image_embeds[idx], PAIR_TEXT_EMBEDS: text_embeds[idx]}
        with autocast():
            scores.append(model(batch)["match_scores"].float())
    local = torch.cat(scores) if scores else image_embeds.new_zeros(0)
    if world > 1:
        local = accelerator.gather(local.contiguous())
    return local[:total]


def rerank(
    model: torch.nn.Module,
    query_embeds: Tensor,
    gallery_embeds: Tensor,
    k: int,
    accelerator: Any,
    *,
    query_groups: Optional[Tensor] = None,
    gallery_groups: Optional[Tensor] = None,
    chunk_size: int = 1024,
) -> Reranked:
    """Candidates of every query and their fusion-head scores (collective; same result everywhere)."""
    indices = candidates(
        query_embeds, gallery_embeds, k, query_groups=query_groups, gallery_groups=gallery_groups,
        chunk_size=chunk_size,
    )  # (Q, k)
    num_queries, kk = indices.shape
    images = gallery_embeds[indices.reshape(-1)]  # (Q*k, E)
    texts = query_embeds.repeat_interleave(kk, dim=0)  # (Q*k, E)
    scores = score_pairs(model, images, texts, accelerator).reshape(num_queries, kk)
    return Reranked(indices=indices, scores=scores)


def reranked_similarity(sim: Tensor, indices: Tensor, scores: Tensor) -> Tensor:
    """A copy of ``sim`` (c, G) whose stable descending sort is the re-ranked order.

    ``indices`` / ``scores`` (c, k) are the rows' candidates (gallery indices) and logits; the
    candidates get values above every similarity, in fusion-score order.
    """
    c, k = indices.shape
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # (c, k) slots, best first
    slot_rank = torch.empty_like(order)
    slot_rank.scatter_(1, order, torch.arange(k, device=sim.device).expand(c, k))  # (c, k) 0 = best
    # Small integers above the largest similarity: exact in float32, so no two candidates tie.
    value = sim.max() + 1 + (k - slot_rank).to(sim.dtype)  # (c, k)
    return sim.scatter(1, indices, value)
