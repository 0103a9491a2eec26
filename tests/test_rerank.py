"""Fusion re-ranking: candidates, the re-ranked order, and pair scoring sharded over processes."""

from __future__ import annotations

import contextlib

import pytest
import torch

from reid.model.model import PAIR_IMAGE_EMBEDS, PAIR_TEXT_EMBEDS
from reid.rerank import candidates, rerank, reranked_similarity, score_pairs


class PairModel(torch.nn.Module):
    """Scores a pair by the dot product of its two embeddings; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"match_scores": (batch[PAIR_IMAGE_EMBEDS] * batch[PAIR_TEXT_EMBEDS]).sum(-1)}


class RankView:
    """One process of ``world`` as score_pairs sees it (gather is the caller's job here)."""

    device = torch.device("cpu")

    def __init__(self, rank: int, world: int) -> None:
        self.process_index, self.num_processes = rank, world

    def autocast(self):
        return contextlib.nullcontext()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def test_reranked_order_is_candidates_by_score_then_the_rest_in_order() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3]])
    indices = torch.tensor([[0, 3, 2]])  # the dual encoder's top 3
    scores = torch.tensor([[1.0, 5.0, 1.0]])  # 3 first; 0 and 2 tie: dual-encoder order kept
    out = reranked_similarity(sim, indices, scores)
    assert torch.sort(out, dim=1, descending=True, stable=True).indices.tolist() == [[3, 0, 2, 4, 1]]
    assert torch.equal(sim, torch.tensor([[0.9, 0.1, 0.5, 0.7, 0.3]]))  # not modified in place


def test_candidates_skip_the_removed_group_and_follow_the_ranking() -> None:
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    assert candidates(q, g, 2).tolist() == [[0, 1]]
    grouped = candidates(q, g, 2, query_groups=torch.tensor([7]), gallery_groups=torch.tensor([7, 7, 1, 2]))
    assert grouped.tolist() == [[3, 2]]
    assert candidates(q, g, 10).shape == (1, 4)  # k is capped at the gallery size


@pytest.mark.parametrize("total, world, batch", [(10, 3, 4), (7, 2, 100), (2, 4, 1)])
def test_pairs_are_shared_out_once_and_every_process_makes_the_same_calls(total: int, world: int, batch: int) -> None:
    g = torch.Generator().manual_seed(total)
    images, texts = torch.randn(total, 4, generator=g), torch.randn(total, 4, generator=g)
    expected = (images * texts).sum(-1)
    parts, calls = [], []
    for rank in range(world):
        model = PairModel()
        parts.append(score_pairs(model, images, texts, RankView(rank, world), batch_size=batch))
        calls.append(model.calls)
    assert len(set(calls)) == 1  # ZeRO-3: a process that calls forward less often would hang the others
    torch.testing.assert_close(torch.cat(parts)[:total], expected)
    torch.testing.assert_close(score_pairs(PairModel(), images, texts, None), expected)


def test_rerank_scores_query_candidate_pairs() -> None:
    q = torch.nn.functional.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    g = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(2)), dim=1)
    out = rerank(PairModel(), q, g, 4, None)
    assert out.indices.shape == out.scores.shape == (3, 4)
    torch.testing.assert_close(out.scores, (g[out.indices] * q[:, None]).sum(-1))
