"""Negative cloth captions: never the same identity, hard candidates against brute force."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest

from reid.data.pairs import NegativeSampler, hard_candidates

COLOURS = "black white red blue green grey pink brown".split()
GARMENTS = "shirt jacket coat skirt pants jeans shorts shoes boots backpack cap".split()


def _random_table(n=120, num_ids=12, seed=0):
    rng = np.random.default_rng(seed)
    texts = [
        "wearing " + " and ".join(f"a {rng.choice(COLOURS)} {rng.choice(GARMENTS)}" for _ in range(rng.integers(1, 4)))
        for _ in range(n)
    ]
    texts[5] = texts[6] = texts[7]  # identical texts, possibly across identities
    pids = rng.integers(0, num_ids, size=n)
    valid = rng.random(n) > 0.15
    return texts, pids, valid


@pytest.mark.parametrize("hard", [False, True])
def test_negative_is_never_the_same_identity(hard):
    texts, pids, valid = _random_table()
    candidates = hard_candidates(texts, pids, valid, topk=3) if hard else None
    sampler = NegativeSampler(pids, valid, candidates)
    for row in range(len(pids)):
        for seed in range(5):
            neg = sampler.draw(row, np.random.default_rng([seed, row]))
            assert pids[neg] != pids[row] and valid[neg]


def test_one_dominant_identity_still_gets_negatives():
    pids = np.array([0] * 200 + [1])  # rejection sampling fails for identity 0 most of the time
    valid = np.ones(201, dtype=bool)
    sampler = NegativeSampler(pids, valid)
    assert all(sampler.draw(r, np.random.default_rng(r)) == 200 for r in range(0, 200, 7))
    assert sampler.draw(200, np.random.default_rng(0)) < 200


def test_draw_is_deterministic_per_seed_and_varies_across_seeds():
    texts, pids, valid = _random_table()
    sampler = NegativeSampler(pids, valid)
    first = [sampler.draw(3, np.random.default_rng(s)) for s in range(20)]
    assert first == [sampler.draw(3, np.random.default_rng(s)) for s in range(20)]
    assert len(set(first)) > 5


def test_hard_candidates_hand_example():
    texts = [
        "A red coat and black pants.",  # 0, id 0
        "A red coat, black pants and white shoes.",  # 1, id 1
        "A blue cap.",  # 2, id 2
        "a red coat and black pants",  # 3, id 1: same words as row 0, another identity
        "",  # 4, id 2: no clothing part
    ]
    pids = [0, 1, 2, 1, 2]
    valid = [True, True, True, True, False]
    cands = hard_candidates(texts, pids, valid, topk=1)
    assert cands[0] == [1]  # row 3 says exactly the same: a false negative, never a candidate
    assert cands[1] == [0]  # the text of rows 0 / 3, through the row of another identity
    assert cands[3] == [2]  # row 0 has its very text, row 1 its identity: only row 2 is left
    assert cands[4] == []


def _brute_force_tfidf(texts):
    docs = [re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", t.lower()) for t in texts]
    vocab = sorted({w for d in docs for w in d})
    df = Counter(w for d in docs for w in set(d))
    idf = {w: math.log((1 + len(docs)) / (1 + df[w])) + 1 for w in vocab}
    matrix = np.zeros((len(docs), len(vocab)))
    for i, d in enumerate(docs):
        for w, c in Counter(d).items():
            matrix[i, vocab.index(w)] = c * idf[w]
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix @ matrix.T


def test_hard_candidates_match_brute_force_similarities():
    texts, pids, valid = _random_table(n=80, num_ids=8, seed=1)
    topk = 4
    cands = hard_candidates(texts, pids, valid, topk)
    norm = [" ".join(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", t.lower())) for t in texts]
    unique = sorted({norm[i] for i in range(len(texts)) if valid[i]})
    sims = _brute_force_tfidf(unique)
    for row in np.flatnonzero(valid):
        u = unique.index(norm[row])
        eligible = [
            v for v in range(len(unique))
            if v != u and any(pids[r] != pids[row] for r in range(len(texts)) if valid[r] and norm[r] == unique[v])
        ]
        best = sorted((sims[u, v] for v in eligible), reverse=True)[:topk]
        got = sorted((sims[u, unique.index(norm[c])] for c in cands[row]), reverse=True)
        assert np.allclose(got, best, atol=1e-5)
        assert all(pids[c] != pids[row] and valid[c] for c in cands[row])
        assert len({norm[c] for c in cands[row]}) == len(cands[row])  # distinct texts


def _mean_similarity(texts, valid, cands):
    norm = [" ".join(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", t.lower())) for t in texts]
    unique = sorted({norm[i] for i in range(len(texts)) if valid[i]})
    sims = _brute_force_tfidf(unique)
    return [np.mean([sims[unique.index(norm[r]), unique.index(norm[c])] for c in cands[r]])
            for r in range(len(texts)) if cands[r]]


def test_approximate_search_keeps_the_rules_and_is_exact_when_everything_is_in_reach():
    """One k-means cell holds every text of a small table, and within reach the similarities are
    the exact ones: the approximate search must then find what the exact one finds."""
    texts, pids, valid = _random_table(n=80, num_ids=8, seed=1)
    exact = hard_candidates(texts, pids, valid, 4, search="exact")
    approx = hard_candidates(texts, pids, valid, 4, search="approximate")
    assert np.allclose(_mean_similarity(texts, valid, approx), _mean_similarity(texts, valid, exact), atol=1e-5)
    norm = [" ".join(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", t.lower())) for t in texts]
    for row in np.flatnonzero(valid):
        assert all(pids[c] != pids[row] and valid[c] and norm[c] != norm[row] for c in approx[row])
    with pytest.raises(ValueError, match="search must be"):
        hard_candidates(texts, pids, valid, 4, search="fast")


def test_approximate_search_over_many_cells_stays_close_to_exact(monkeypatch):
    """Cells of ~16 texts, 8 of ~25 searched: the candidates' similarity stays within 3 % of the
    exact candidates' on average, and the rules hold for every row."""
    import reid.data.pairs as pairs

    monkeypatch.setattr(pairs, "CELL_SIZE", 16)
    monkeypatch.setattr(pairs, "PROBE_CELLS", 8)
    texts, pids, valid = _random_table(n=400, num_ids=40, seed=2)
    exact = hard_candidates(texts, pids, valid, 3, search="exact")
    approx = hard_candidates(texts, pids, valid, 3, search="approximate")
    assert np.mean(_mean_similarity(texts, valid, approx)) >= 0.97 * np.mean(_mean_similarity(texts, valid, exact))
    assert sum(map(len, approx)) >= 0.95 * sum(map(len, exact))
    norm = [" ".join(re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", t.lower())) for t in texts]
    for row in np.flatnonzero(valid):
        assert all(pids[c] != pids[row] and valid[c] and norm[c] != norm[row] for c in approx[row])


def test_sketch_keeps_frequent_words_exact_and_hashes_the_rest():
    """Over SKETCH_DIM words, the SKETCH_DIM / 2 most frequent keep their own coordinate: texts made
    of them have the same cosine in the sketch as in TF-IDF; the sketch of rare words is unbiased."""
    import torch

    from reid.data.pairs import _sketch, _tfidf

    common = [f"c{i}" for i in range(60)]  # fewer than SKETCH_DIM / 2
    rare = [f"r{i}" for i in range(400)]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(common, 5)) for _ in range(300)] + [" ".join(rng.choice(rare, 3)) for _ in range(200)]
    matrix = _tfidf(texts)
    assert matrix.shape[1] > 128
    sketch = _sketch(matrix)
    dense = matrix.to_dense()
    exact = dense[:300] @ dense[:300].T
    torch.testing.assert_close(sketch[:300] @ sketch[:300].T, exact, atol=1e-5, rtol=0)
    gap = (sketch[300:] @ sketch[300:].T - dense[300:] @ dense[300:].T).fill_diagonal_(0)
    assert abs(float(gap.mean())) < 0.01 and float(gap.abs().max()) < 1.0
