"""Global-batch samplers: process-count invariance, P x K structure, resume, evaluation shards."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from reid.data.samplers import GlobalBatchSampler, ShardSampler
from reid.errors import DataError

# 30 identities with 1..7 rows each, interleaved as a real table is not
PIDS = [pid for pid in range(30) for _ in range(1 + pid % 7)]
np.random.default_rng(0).shuffle(PIDS)


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("mode", ["random", "identity"])
@pytest.mark.parametrize("replicas", [2, 4])
def test_one_process_sees_the_union_of_several(mode, replicas):
    per_rank = 4
    single = GlobalBatchSampler(PIDS, per_rank * replicas, 1, 0, seed=7, mode=mode, num_instances=2)
    ranks = [GlobalBatchSampler(PIDS, per_rank, replicas, r, seed=7, mode=mode, num_instances=2) for r in range(replicas)]
    assert all(len(s) == len(single) > 0 for s in ranks)
    for epoch in (0, 3):
        whole = _epoch(single, epoch)
        parts = [_epoch(s, epoch) for s in ranks]
        for b, batch in enumerate(whole):
            assert batch == [item for part in parts for item in part[b]]  # rows and sample seeds


def test_epochs_differ_and_repeat():
    sampler = GlobalBatchSampler(PIDS, 8, seed=1)
    a, b = _epoch(sampler, 0), _epoch(sampler, 1)
    assert a != b and a == _epoch(sampler, 0)
    seeds = [s for batch in a for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # one seed per position
    assert not set(seeds) & {s for batch in b for _, s in batch}
    assert GlobalBatchSampler(PIDS, 8, seed=2).global_order(0).tolist() != sampler.global_order(0).tolist()


def test_random_mode_covers_each_row_at_most_once():
    sampler = GlobalBatchSampler(PIDS, 8, 2, 1, seed=0)
    rows = [r for batch in _epoch(sampler, 0) for r, _ in batch]
    assert len(sampler) == len(PIDS) // 16 and len(rows) == len(set(rows)) == 8 * len(sampler)


def test_resume_skips_exactly_the_first_samples_once():
    sampler = GlobalBatchSampler(PIDS, 4, 2, 0, seed=5, mode="identity", num_instances=2)
    full = _epoch(sampler, 2)
    sampler.set_start(3 * 8)  # 3 global batches of 4 x 2
    assert _epoch(sampler, 2) == full[3:]
    assert _epoch(sampler, 2) == full  # the skip applies to one iteration only
    sampler.set_start(sampler.epoch_rows())
    assert _epoch(sampler, 2) == []  # resumed at an epoch's end: nothing left
    with pytest.raises(ValueError, match="outside"):
        sampler.set_start(sampler.epoch_rows() + 1)


@pytest.mark.parametrize("mode", ["random", "identity"])
def test_resume_with_another_global_batch_continues_from_the_same_sample(mode):
    """A run that consumed 3 batches of 8 rows resumes with 2 processes x 8 (global 16): it goes on
    with the rows the first run had not reached, in the first run's order, cut 16 at a time."""
    before = GlobalBatchSampler(PIDS, 8, 1, 0, seed=5, mode=mode, num_instances=2)
    before.set_epoch(1)
    order = before.global_order(1)
    after = [GlobalBatchSampler(PIDS, 8, 2, r, seed=5, mode=mode, num_instances=2) for r in range(2)]
    for s in after:
        s.set_start(24, order_size=8)
    parts = [_epoch(s, 1) for s in after]
    assert len(parts[0]) == (len(order) - 24) // 16
    for b, (mine, theirs) in enumerate(zip(*parts)):
        rows = [r for r, _ in mine + theirs]
        assert rows == order[24 + 16 * b : 24 + 16 * (b + 1)].tolist()
    # the sample seeds are those of the positions in the first run's order
    assert parts[0][0][0][1] == [batch for batch in _epoch(before, 1)][3][0][1]
    fresh = GlobalBatchSampler(PIDS, 8, 2, 0, seed=5, mode=mode, num_instances=2)
    assert _epoch(after[0], 2) == _epoch(fresh, 2)  # the next epoch is cut for the new size


def test_identity_batches_are_whole_groups_of_distinct_identities():
    k, per_rank, replicas = 2, 6, 2
    pids = np.asarray(PIDS)
    samplers = [GlobalBatchSampler(PIDS, per_rank, replicas, r, seed=3, mode="identity", num_instances=k) for r in range(replicas)]
    num_groups = sum(max(1, n // k) for n in Counter(PIDS).values())
    assert len(samplers[0]) == num_groups * k // (per_rank * replicas)
    repeated = 0
    for batches in zip(*(_epoch(s, 0) for s in samplers)):
        global_pids = []
        for batch in batches:
            rows = [r for r, _ in batch]
            groups = [pids[rows[i : i + k]] for i in range(0, per_rank, k)]
            assert all(len(set(g)) == 1 for g in groups)  # K rows of one identity
            global_pids += [int(g[0]) for g in groups]
        repeated += len(global_pids) - len(set(global_pids))
    # 30 identities, 6 groups per global batch: only the epoch's tail may repeat an identity
    assert repeated <= 2


def test_identity_with_fewer_than_k_rows_is_sampled_with_replacement():
    pids = [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    sampler = GlobalBatchSampler(pids, 4, seed=0, mode="identity", num_instances=4)
    rows = [r for batch in _epoch(sampler, 0) for r, _ in batch]
    assert len(sampler) == 4 and Counter(rows)[0] == 4  # identity 0's single row fills its group


def test_too_few_rows_for_one_global_batch():
    with pytest.raises(DataError, match="lower data.batch_size"):
        GlobalBatchSampler(PIDS[:10], 8, 2, 0)


@pytest.mark.parametrize("n, replicas", [(10, 3), (9, 3), (5, 4), (1, 2), (0, 2)])
def test_shards_are_equal_contiguous_and_truncate_back(n, replicas):
    shards = [list(ShardSampler(n, r, replicas)) for r in range(replicas)]
    assert len({len(s) for s in shards}) == 1
    gathered = [i for shard in shards for i in shard]
    assert gathered[:n] == list(range(n))
    assert all(i == n - 1 for i in gathered[n:])


# ------------------------------------------------------------------------------- similar identities
# Identity texts on three binary facts: identity i is "tall"/"short", "man"/"woman", "dark"/"pale".
FACTS = [(p % 2, (p // 2) % 2, (p // 4) % 2) for p in range(30)]
TEXTS = {p: " ".join((("short", "tall")[a], ("woman", "man")[b], ("pale", "dark")[c])) for p, (a, b, c) in enumerate(FACTS)}


def _neighbours():
    from reid.data.pairs import identity_neighbours

    return identity_neighbours(PIDS, [TEXTS[p] for p in PIDS], 8)


def test_identity_neighbours_are_the_most_similar_texts_first():
    neighbours = _neighbours()
    assert neighbours.shape == (30, 8)
    for i, row in enumerate(neighbours):  # identities sorted by pid: index i is pid i
        assert i not in row
        shared = [sum(x == y for x, y in zip(FACTS[i], FACTS[j])) for j in row]
        assert shared == sorted(shared, reverse=True) and shared[0] == 3  # an identical text comes first


@pytest.mark.parametrize("replicas", [1, 2])
def test_similar_batches_deal_the_identity_groups_in_chains_of_similar_people(replicas):
    k, per_rank, group = 2, 8, 2
    neighbours = _neighbours()
    options = dict(seed=3, num_instances=k)
    similar = [GlobalBatchSampler(PIDS, per_rank, replicas, r, mode="similar", neighbours=neighbours, group=group,
                                  **options) for r in range(replicas)]
    plain = GlobalBatchSampler(PIDS, per_rank, replicas, 0, mode="identity", **options)
    assert len(similar[0]) == len(plain)
    pids = np.asarray(PIDS)
    order = similar[0].global_order(0)
    firsts = [int(pids[order[i]]) for i in range(0, len(order), k)]  # the identity of each dealt group
    pairs = [(firsts[i], firsts[i + 1]) for i in range(0, len(firsts) - 1, group)]
    close = [sum(x == y for x, y in zip(FACTS[a], FACTS[b])) for a, b in pairs]
    assert np.mean(close) > 2.5  # a chain pairs people sharing (nearly) every fact; at random: 1.5
    for batches in zip(*(_epoch(s, 0) for s in similar)):  # whole groups, as in identity mode
        for batch in batches:
            rows = [r for r, _ in batch]
            assert all(len(set(pids[rows[i: i + k]])) == 1 for i in range(0, per_rank, k))
