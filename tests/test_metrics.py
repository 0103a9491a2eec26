"""reid.metrics against a brute-force pure-Python reference (loop over queries, sort, walk)."""

from __future__ import annotations

import pytest
import torch

from reid.metrics import rank, rank_from_embeddings, topk_indices

KS = (1, 5, 10)


def reference_rank(sim: list[list[float]], qpids: list[int], gpids: list[int], ks=KS) -> dict:
    """IRRA's definitions, one query at a time; ties ordered by ascending gallery index."""
    hits_at_k, aps, inps = [0] * len(ks), [], []
    skipped = 0
    for row, qpid in zip(sim, qpids):
        order = sorted(range(len(row)), key=lambda j: (-row[j], j))
        hit_ranks = [r + 1 for r, j in enumerate(order) if gpids[j] == qpid]  # 1-based
        if not hit_ranks:
            skipped += 1
            continue
        for i, k in enumerate(ks):
            hits_at_k[i] += hit_ranks[0] <= k
        aps.append(sum((n + 1) / r for n, r in enumerate(hit_ranks)) / len(hit_ranks))
        inps.append(len(hit_ranks) / hit_ranks[-1])
    num = len(aps)
    out = {f"R{k}": 100.0 * h / num for k, h in zip(ks, hits_at_k)}
    out.update(mAP=100.0 * sum(aps) / num, mINP=100.0 * sum(inps) / num, num_skipped=skipped)
    return out


def random_case(seed: int, num_queries: int, num_gallery: int, num_ids: int, decimals=None):
    """Random similarities; gallery covers every id so each query has >= 1 positive."""
    g = torch.Generator().manual_seed(seed)
    extra = torch.randint(num_ids, (num_gallery - num_ids,), generator=g)
    gpids = torch.cat([torch.arange(num_ids), extra])
    gpids = gpids[torch.randperm(num_gallery, generator=g)]
    qpids = torch.randint(num_ids, (num_queries,), generator=g)
    sim = torch.rand(num_queries, num_gallery, generator=g, dtype=torch.float64)
    if decimals is not None:  # coarse values -> many ties
        sim = torch.round(sim, decimals=decimals)
    return sim, qpids, gpids


def assert_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-4), key


@pytest.mark.parametrize(
    "seed,num_ids,decimals",
    [
        (0, 20, None),  # ~1 positive per query (G = 20 gallery items, 20 ids)
        (1, 3, None),  # many positives per query
        (2, 8, 1),  # ties (values in steps of 0.1)
        (3, 2, 0),  # almost everything tied
    ],
)
def test_matches_brute_force(seed, num_ids, decimals):
    sim, qpids, gpids = random_case(seed, 31, 20, num_ids, decimals)
    got = rank(sim, qpids, gpids, ks=(1, 2, 5, 10, 50))
    want = reference_rank(sim.tolist(), qpids.tolist(), gpids.tolist(), ks=(1, 2, 5, 10, 50))
    assert_close(got, want)
    assert got["num_skipped"] == 0


def test_float32_and_numpy_inputs_agree_with_reference():
    sim, qpids, gpids = random_case(4, 25, 40, 6)
    want = reference_rank(sim.float().tolist(), qpids.tolist(), gpids.tolist())
    assert_close(rank(sim.float(), qpids, gpids), want)
    assert_close(rank(sim.float().numpy(), qpids.numpy(), gpids.numpy()), want)


def test_hand_computed_case():
    # Ranking of the single query: miss, hit, miss, hit -> AP = (1/2 + 2/4) / 2, INP = 2/4.
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    got = rank(sim, torch.tensor([7]), torch.tensor([1, 7, 2, 7]), ks=(1, 2, 4))
    assert got == {"R1": 0.0, "R2": 100.0, "R4": 100.0, "mAP": 50.0, "mINP": 50.0, "num_skipped": 0}


def test_ties_follow_gallery_index():
    # All scores equal: the order is the gallery order, so the hit at index 1 is ranked 2nd.
    got = rank(torch.zeros(1, 3), torch.tensor([5]), torch.tensor([0, 5, 0]), ks=(1, 2))
    assert (got["R1"], got["R2"], got["mAP"], got["mINP"]) == (0.0, 100.0, 50.0, 50.0)


def test_recall_monotone_in_k():
    sim, qpids, gpids = random_case(5, 40, 60, 15)
    ks = (1, 2, 3, 5, 10, 20, 60, 100)
    got = rank(sim, qpids, gpids, ks=ks)
    recalls = [got[f"R{k}"] for k in ks]
    assert recalls == sorted(recalls)
    assert recalls[-1] == 100.0  # k >= G covers the whole gallery
    assert 0.0 < recalls[0] < 100.0


def test_perfect_ranking_scores_100():
    sim, qpids, gpids = random_case(6, 30, 25, 5)
    perfect = (qpids[:, None] == gpids[None, :]).double() + 0.1 * sim  # positives above negatives
    got = rank(perfect, qpids, gpids)
    assert {k: v for k, v in got.items() if k != "num_skipped"} == pytest.approx(
        {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0, "mINP": 100.0}
    )


def test_chunking_invariance():
    sim, qpids, gpids = random_case(7, 23, 30, 6, decimals=1)
    results = [rank(sim, qpids, gpids, chunk_size=c) for c in (1, 7, 23, 1000)]
    assert all(r == results[0] for r in results)


def test_query_without_positive_is_skipped_and_counted():
    sim, qpids, gpids = random_case(8, 20, 30, 6)
    qpids[[3, 11]] = 99  # no gallery image of person 99
    got = rank(sim, qpids, gpids, chunk_size=7)
    assert got["num_skipped"] == 2
    assert_close(got, reference_rank(sim.tolist(), qpids.tolist(), gpids.tolist()))
    keep = qpids != 99
    assert_close(got, {**rank(sim[keep], qpids[keep], gpids), "num_skipped": 2})


def test_no_query_with_positive_raises():
    with pytest.raises(ValueError, match="none of the 2 queries"):
        rank(torch.rand(2, 3), torch.tensor([8, 9]), torch.tensor([0, 1, 2]))


def test_embeddings_and_topk_agree_with_similarity():
    # Small integer-valued embeddings: dot products are exact in every chunking, with ties.
    g = torch.Generator().manual_seed(9)
    q = torch.randint(-2, 3, (17, 4), generator=g).double()
    gal = torch.randint(-2, 3, (12, 4), generator=g).double()
    qpids, gpids = torch.randint(4, (17,), generator=g), torch.arange(12) % 4
    sim = q @ gal.T
    want = reference_rank(sim.tolist(), qpids.tolist(), gpids.tolist())
    for chunk_size in (1, 5, 17):
        assert_close(rank_from_embeddings(q, gal, qpids, gpids, chunk_size=chunk_size), want)
    scores, indices = topk_indices(q, gal, k=5, chunk_size=4)
    assert scores.shape == indices.shape == (17, 5)
    for row, (srow, irow) in enumerate(zip(scores.tolist(), indices.tolist())):
        order = sorted(range(12), key=lambda j: (-sim[row, j].item(), j))[:5]
        assert irow == order
        assert srow == [sim[row, j].item() for j in order]
    assert topk_indices(q, gal, k=50)[1].shape == (17, 12)  # k > G: the whole gallery


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.rand(3), [0, 1, 2], [0, 1, 2]), "2-D floating-point"),
        ((torch.ones(3, 4, dtype=torch.int64), [0, 1, 2], [0, 1, 2, 3]), "2-D floating-point"),
        ((torch.rand(3, 4), [0, 1], [0, 1, 2, 3]), "query_pids has 2 entries but there are 3"),
        ((torch.rand(3, 4), [0, 1, 2], [0, 1, 2]), "gallery_pids has 3 entries but there are 4"),
        ((torch.rand(2, 2), [0.0, 1.0], [0, 1]), "1-D integer"),
        ((torch.rand(2, 2), [[0, 1]], [0, 1]), "1-D integer"),
        ((torch.rand(0, 2), [], [0, 1]), "query_pids is empty"),
        ((torch.tensor([[0.5, float("nan")]]), [0], [0, 1]), "NaN"),
    ],
)
def test_rank_rejects_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        rank(*args)


@pytest.mark.parametrize(
    "kwargs,match", [({"ks": ()}, "ks"), ({"ks": (1, 0)}, "ks"), ({"chunk_size": 0}, "chunk_size")]
)
def test_rank_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rank(torch.rand(2, 2), [0, 1], [0, 1], **kwargs)


def test_embedding_functions_reject_bad_inputs():
    with pytest.raises(ValueError, match="dimension 4 but gallery_embeds have 3"):
        rank_from_embeddings(torch.rand(2, 4), torch.rand(3, 3), [0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="gallery_pids has 2 entries but there are 3"):
        rank_from_embeddings(torch.rand(2, 4), torch.rand(3, 4), [0, 1], [0, 1])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        topk_indices(torch.rand(2, 4), torch.rand(3, 4), k=0)


def test_removing_a_group_is_deleting_its_items_from_that_query_s_gallery() -> None:
    """The clothing-change removal in the one ranking kernel: each query ranked alone on its gallery
    with its own group's items deleted gives the same numbers."""
    g = torch.Generator().manual_seed(7)
    q, gal = torch.randn(9, 4, generator=g), torch.randn(14, 4, generator=g)
    qp, gp = torch.randint(0, 3, (9,), generator=g), torch.randint(0, 3, (14,), generator=g)
    qg, gg = torch.randint(0, 4, (9,), generator=g), torch.randint(0, 4, (14,), generator=g)
    qp[0] = 9  # nobody in the gallery: skipped
    gg[gp == qp[1]] = qg[1]  # every image of query 1's person in its own group: skipped
    grouped = rank_from_embeddings(q, gal, qp, gp, chunk_size=4, query_groups=qg, gallery_groups=gg)
    per_query = []
    for i in range(len(q)):
        keep = gg != qg[i]
        if (gp[keep] == qp[i]).any():
            per_query.append(rank_from_embeddings(q[i : i + 1], gal[keep], qp[i : i + 1], gp[keep]))
    assert grouped["num_skipped"] == len(q) - len(per_query) > 0
    for name in ("R1", "R5", "R10", "mAP", "mINP"):
        want = sum(r[name] for r in per_query) / len(per_query)
        assert grouped[name] == pytest.approx(want, abs=1e-4), name
    with pytest.raises(ValueError, match="give both or neither"):
        rank_from_embeddings(q, gal, qp, gp, query_groups=qg)
