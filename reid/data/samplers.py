"""Batch samplers that are correct under several processes (Accelerate does not shard the loader).

:class:`GlobalBatchSampler` draws one order per epoch from ``(seed, epoch)`` — the same on every
process — and cuts it into **global** batches of ``batch_size * num_replicas`` rows (the last
partial one is dropped). Process ``rank`` takes rows ``[rank * batch_size, (rank + 1) * batch_size)``
of each global batch. So one process with batch 2b sees exactly the union of what two processes
with batch b see, and every row carries a ``sample_seed`` that depends only on (seed, epoch,
position in the epoch's order): augmentation and negative draws do not depend on the number of
processes or DataLoader workers.

A resumed run locates itself in **global samples**: ``set_start(position, order_size)`` makes the
next iteration start at sample ``position`` of the epoch's order, cut for ``order_size`` rows per
global batch (the global batch the epoch began with). So a run resumed with another global batch
(``data.batch_size`` x processes changed) still continues with exactly the samples the interrupted
run had not reached; only the rest of that epoch is cut into batches of the new size.

``mode="similar"`` is P×K sampling whose identities come in chains of similar identity descriptions
(each followed by its nearest not-yet-placed neighbour, :func:`reid.data.pairs.identity_neighbours`),
so a batch holds people who differ in few identity facts: the identity terms can then only be
lowered by the finer facts (build, hair style, gender), not by hair or skin colour alone.

``mode="identity"`` is IRRA's P×K sampling: each identity's rows are shuffled and cut into groups of
K (an identity with fewer than K rows is filled up by sampling with replacement; the leftover rows
of larger ones wait for another epoch), groups are dealt round by round in a shuffled identity
order, and global batches are filled with whole groups, deferring a group whose identity is already
in the batch. An identity appears twice in one global batch only when too few identities are left.

:class:`ShardSampler` gives each process a contiguous shard of an evaluation set, padded with the
last index to equal length; the caller gathers the shards in rank order and truncates to ``n``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Iterator, Literal, Sequence

import numpy as np
import torch.utils.data

from reid.errors import DataError

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit integers with good avalanche."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the sample at ``position`` of epoch ``epoch``'s global order."""
    return _mix64(_mix64(_mix64(seed & _MASK64) ^ epoch) ^ position) >> 1


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields, for this rank, lists of ``(row_index, sample_seed)``; see the module docstring."""

    def __init__(
        self,
        pids: Sequence[int],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        mode: Literal["random", "identity", "similar"] = "random",
        num_instances: int = 4,
        neighbours: np.ndarray | None = None,
        group: int = 4,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if mode != "random" and batch_size % num_instances:
            raise ValueError(f"batch_size {batch_size} is not a multiple of num_instances {num_instances}")
        if mode == "similar" and neighbours is None:
            raise ValueError("mode 'similar' needs each identity's neighbours (reid.data.pairs.identity_neighbours)")
        self.neighbours, self.group = neighbours, max(1, group)
        self.pids = np.asarray(pids, dtype=np.int64)
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.mode, self.num_instances = seed, mode, num_instances
        self.global_size = batch_size * num_replicas
        self.epoch = 0
        self._start, self._start_order = 0, self.global_size
        if mode != "random":
            order = np.argsort(self.pids, kind="stable")
            cuts = np.flatnonzero(np.diff(self.pids[order])) + 1
            self._rows_by_pid = np.split(order, cuts)  # rows of each identity, identities sorted
        self._num_batches = self.num_batches_for(self.global_size)
        if self._num_batches == 0:
            raise DataError(
                f"{len(self.pids)} training rows give no full global batch of data.batch_size "
                f"{batch_size} x {num_replicas} processes: lower data.batch_size"
            )

    def __len__(self) -> int:
        return self._num_batches

    def num_batches_for(self, global_size: int) -> int:
        """Full global batches of ``global_size`` rows in one epoch."""
        if self.mode == "random":
            return len(self.pids) // global_size
        num_groups = sum(max(1, len(r) // self.num_instances) for r in self._rows_by_pid)
        return num_groups * self.num_instances // global_size

    def epoch_rows(self, order_size: int | None = None) -> int:
        """Rows in an epoch's order cut for ``order_size`` rows per global batch (default: ours)."""
        size = order_size or self.global_size
        return self.num_batches_for(size) * size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, position: int, order_size: int | None = None) -> None:
        """Start the next iteration (only) at global sample ``position`` of the epoch's order cut for
        ``order_size`` rows per global batch (default: ours); see the module docstring."""
        size = order_size or self.global_size
        if self.mode != "random" and size % self.num_instances:
            raise ValueError(f"global batch {size} is not a multiple of num_instances {self.num_instances}")
        if not 0 <= position <= self.epoch_rows(size):
            raise ValueError(f"start sample {position} is outside 0..{self.epoch_rows(size)}")
        self._start, self._start_order = position, size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start, size = self._start, self._start_order
        self._start, self._start_order = 0, self.global_size
        order = self._order(self.epoch, size)
        for batch_start in range(start, len(order) - self.global_size + 1, self.global_size):
            first = batch_start + self.rank * self.batch_size
            yield [
                (int(order[p]), sample_seed(self.seed, self.epoch, p))
                for p in range(first, first + self.batch_size)
            ]

    def global_order(self, epoch: int) -> np.ndarray:
        """Row indices of all global batches of ``epoch``, concatenated (identical on every rank)."""
        return self._order(epoch, self.global_size)

    def _order(self, epoch: int, global_size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        num_batches = self.num_batches_for(global_size)
        if self.mode == "random":
            return rng.permutation(len(self.pids))[: num_batches * global_size]
        return self._identity_order(rng, global_size, num_batches)

    def _identity_order(self, rng: np.random.Generator, global_size: int, num_batches: int) -> np.ndarray:
        k = self.num_instances
        groups_by_pid: list[list[np.ndarray]] = []
        for rows in self._rows_by_pid:
            rows = rng.permutation(rows) if len(rows) >= k else rng.choice(rows, size=k, replace=True)
            groups_by_pid.append([rows[i * k : (i + 1) * k] for i in range(len(rows) // k)])
        dealt: list[tuple[int, np.ndarray]] = []  # (identity, group), round by round
        for r in range(max(len(g) for g in groups_by_pid)):
            ids = [i for i, g in enumerate(groups_by_pid) if len(g) > r]
            ids = rng.permutation(ids) if self.mode == "identity" else _chain(ids, self.neighbours, rng, self.group)
            dealt.extend((i, groups_by_pid[i][r]) for i in ids)
        batches = _fill_batches(dealt, global_size // k, num_batches)
        return np.concatenate([g for batch in batches for _, g in batch])


def _chain(ids: list[int], neighbours: np.ndarray, rng: np.random.Generator, length: int) -> list[int]:
    """``ids`` in chains of up to ``length``: each identity is followed by its most similar
    identity not yet placed (``neighbours[i]``: similar identities, best first); a chain ends after
    ``length`` identities or when its neighbours are all placed, and the next starts from a random
    identity. Consecutive identities share a batch, so a batch holds groups of similar people."""
    remaining = set(ids)
    order: list[int] = []
    for start in rng.permutation(ids):
        current, size = int(start), 0
        while current in remaining and size < length:
            order.append(current)
            remaining.discard(current)
            size += 1
            current = next((int(n) for n in neighbours[current] if n in remaining), -1)
    return order


def _fill_batches(dealt: list[tuple[int, np.ndarray]], per_batch: int, num_batches: int) -> list[list]:
    """Cut ``dealt`` into batches of ``per_batch`` groups, deferring repeated identities."""
    pending = deque(dealt)
    batches = []
    for _ in range(num_batches):
        batch, seen, deferred = [], set(), []
        # Look ahead a bounded distance so an epoch stays O(groups) even at its repetitive end.
        while pending and len(batch) < per_batch and len(deferred) < 4 * per_batch:
            pid, group = pending.popleft()
            if pid in seen:
                deferred.append((pid, group))
            else:
                batch.append((pid, group))
                seen.add(pid)
        while len(batch) < per_batch:  # too few identities left: repeat one
            batch.append(deferred.pop(0) if deferred else pending.popleft())
        pending.extendleft(reversed(deferred))
        batches.append(batch)
    return batches


class ShardSampler(torch.utils.data.Sampler):
    """Contiguous shard ``rank`` of ``range(n)``, padded with ``n - 1`` to ``ceil(n / replicas)``."""

    def __init__(self, n: int, rank: int = 0, num_replicas: int = 1):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.n, self.rank, self.num_replicas = n, rank, num_replicas
        self.per_rank = math.ceil(n / num_replicas) if n else 0

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        first = self.rank * self.per_rank
        for i in range(first, first + self.per_rank):
            yield min(i, self.n - 1)
