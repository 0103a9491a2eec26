"""Retrieval metrics for text -> image person search: R@k, mAP and mINP, in percent.

Queries are captions (rows of the similarity matrix), the gallery is images (columns) and a hit is a
gallery image of the query's person. The definitions are IRRA's (``utils/metrics.py::rank``):

* ``R{k}``: % of queries with at least one hit among their ``k`` most similar images (k larger than
  the gallery means the whole gallery).
* ``mAP``: mean over queries of AP = the mean, over ALL of the person's gallery images, of the
  precision at that image's rank (hits / rank).
* ``mINP``: mean over queries of INP = (number of hits) / (1-based rank of the last hit).

Ranking order: by similarity, descending; equal similarities keep ascending gallery index (a stable
sort), so the ranking is deterministic and the same on every device. The numbers are bit-identical
for every ``chunk_size``; CPU and CUDA agree up to float32 rounding of the per-query AP / INP.

**Removed items.** :func:`rank_from_embeddings` takes optional ``query_groups`` / ``gallery_groups``:
the gallery items of a query's own group are removed from its gallery — ranked last and never a
hit, which is the same as deleting them (the clothing-change protocol: the group is the outfit).
Every ranking in the project goes through one kernel (:func:`_chunk_stats`).

Queries with no hit in the gallery (IRRA divides by zero there) are skipped: they count in none of
the averages and their number is returned as ``num_skipped``. If every query is skipped the function
raises ``ValueError``, as it does for NaN similarities and for inputs whose shapes do not fit.

Memory: queries are processed ``chunk_size`` rows at a time, so the extra memory is about
``17 * chunk_size * G`` bytes (int64 sort indices and gathered ids, the hit mask; plus the float32
similarity chunk in :func:`rank_from_embeddings`), ~350 MB for ICFG-PEDES (19,848 x 19,848) with the
default ``chunk_size``. IRRA sorts the full Q x G matrix at once and runs out of memory there.
Everything stays on the inputs' device; the host waits only once, for the final numbers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from numbers import Integral
from typing import Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]


@torch.no_grad()
def rank(
    similarity: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """R@k for each k, mAP and mINP (percent) of a (Q, G) query x gallery similarity matrix.

    Returns ``{"R1": .., "R5": .., "R10": .., "mAP": .., "mINP": .., "num_skipped": n}`` (one
    ``R{k}`` per entry of ``ks``); ``num_skipped`` counts the queries without a hit in the gallery.
    """
    similarity = torch.as_tensor(similarity)
    if similarity.dim() != 2 or not similarity.is_floating_point():
        raise ValueError(
            f"similarity must be a 2-D floating-point (queries, gallery) matrix, "
            f"got shape {tuple(similarity.shape)} and dtype {similarity.dtype}"
        )
    num_queries, num_gallery = similarity.shape
    query_pids, gallery_pids = _check_pids(
        query_pids, gallery_pids, num_queries, num_gallery, similarity.device
    )
    ks, chunk_size = _check_ks(ks), _check_chunk_size(chunk_size)
    starts = range(0, num_queries, chunk_size)
    chunks = ((start, similarity[start : start + chunk_size]) for start in starts)
    return _rank_chunks(chunks, query_pids, gallery_pids, ks)


@torch.no_grad()
def rank_from_embeddings(
    query_embeds: ArrayLike,
    gallery_embeds: ArrayLike,
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    *,
    query_groups: ArrayLike | None = None,
    gallery_groups: ArrayLike | None = None,
) -> dict[str, float]:
    """:func:`rank` of ``query_embeds @ gallery_embeds.T``, computed ``chunk_size`` rows at a time.

    The similarity is the dot product, i.e. cosine similarity for L2-normalised embeddings (the
    caller normalises). The full (Q, G) matrix is never built; queries are moved to the gallery's
    device and dtype. With ``query_groups`` (Q,) and ``gallery_groups`` (G,), each query's own
    group is removed from its gallery (module docstring).
    """
    query_embeds, gallery_embeds = _check_embeds(query_embeds, gallery_embeds)
    query_pids, gallery_pids = _check_pids(
        query_pids, gallery_pids, len(query_embeds), len(gallery_embeds), gallery_embeds.device
    )
    ks, chunk_size = _check_ks(ks), _check_chunk_size(chunk_size)
    groups = None
    if (query_groups is None) != (gallery_groups is None):
        raise ValueError("query_groups and gallery_groups go together: give both or neither")
    if query_groups is not None:
        groups = _check_pids(query_groups, gallery_groups, len(query_embeds), len(gallery_embeds),
                             gallery_embeds.device, names=("query_groups", "gallery_groups"))
    chunks = _similarity_chunks(query_embeds, gallery_embeds, chunk_size)
    return _rank_chunks(chunks, query_pids, gallery_pids, ks, groups)


@torch.no_grad()
def topk_indices(
    query_embeds: ArrayLike, gallery_embeds: ArrayLike, k: int = 10, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` most similar gallery items: ``(scores, indices)``, both (Q, min(k, G)).

    Same order as :func:`rank` (descending dot product, ties by ascending gallery index).
    """
    query_embeds, gallery_embeds = _check_embeds(query_embeds, gallery_embeds)
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = min(int(k), len(gallery_embeds))
    scores, indices = [], []
    for _, sim in _similarity_chunks(query_embeds, gallery_embeds, _check_chunk_size(chunk_size)):
        # A stable sort rather than torch.topk, whose order among equal scores is unspecified.
        top = torch.sort(sim, dim=1, descending=True, stable=True)
        # clone: a slice would keep the whole (c, G) sort result of every chunk alive.
        scores.append(top.values[:, :k].clone())  # (c, k)
        indices.append(top.indices[:, :k].clone())  # (c, k)
    return torch.cat(scores), torch.cat(indices)


# --------------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------------


def _rank_chunks(
    chunks: Iterator[tuple[int, torch.Tensor]],
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ks: tuple[int, ...],
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Accumulate per-query statistics over (start row, (c, G) similarity) chunks; ``groups``
    (query groups (Q,), gallery groups (G,)) removes each query's own group from its gallery."""
    device, num_gallery = gallery_pids.device, len(gallery_pids)
    if num_gallery >= 2**24:  # ranks and hit counts are float32, exact only below 2**24
        raise ValueError(f"the gallery has {num_gallery} items; at most {2**24 - 1} are supported")
    ranks = torch.arange(1, num_gallery + 1, device=device, dtype=torch.float32)  # (G,)
    k_cols = torch.tensor([min(k, num_gallery) - 1 for k in ks], device=device)  # (K,)
    # Device-side accumulators (no host sync inside the loop). AP and INP are kept per query and
    # summed once at the end, so the result does not depend on chunk_size down to the last bit.
    hits_at_k = torch.zeros(len(ks), dtype=torch.int64, device=device)  # (K,)
    ap = torch.zeros(len(query_pids), dtype=torch.float64, device=device)  # (Q,)
    inp = torch.zeros(len(query_pids), dtype=torch.float64, device=device)  # (Q,)
    num_valid = torch.zeros((), dtype=torch.int64, device=device)
    has_nan = torch.zeros((), dtype=torch.bool, device=device)
    for start, sim in chunks:
        end = start + len(sim)
        has_nan |= torch.isnan(sim).any()
        removed = None if groups is None else groups[0][start:end, None] == groups[1][None, :]  # (c, G)
        hit_at_k, ap[start:end], inp[start:end], valid = _chunk_stats(
            sim, query_pids[start:end], gallery_pids, ranks, k_cols, removed
        )
        # Queries without a hit have hit_at_k = ap = inp = 0, so plain sums skip them.
        hits_at_k += hit_at_k.sum(0)
        num_valid += valid.sum()

    if bool(has_nan):
        raise ValueError("similarity contains NaN; check the embeddings (a diverged model?)")
    num_valid_int = int(num_valid)
    if num_valid_int == 0 and groups is not None:
        raise ValueError(f"none of the {len(query_pids)} queries has a hit left in its gallery under this protocol")
    if num_valid_int == 0:
        raise ValueError(
            f"none of the {len(query_pids)} queries has a matching person id in the gallery of "
            f"{num_gallery} items; are query and gallery from the same split?"
        )
    scale = 100.0 / num_valid_int
    result = {f"R{k}": v * scale for k, v in zip(ks, hits_at_k.tolist())}
    result["mAP"] = float(ap.sum()) * scale
    result["mINP"] = float(inp.sum()) * scale
    result["num_skipped"] = len(query_pids) - num_valid_int
    return result


def _chunk_stats(
    sim: torch.Tensor,
    query_pids: torch.Tensor,
    gallery_pids: torch.Tensor,
    ranks: torch.Tensor,
    k_cols: torch.Tensor,
    removed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query of one chunk: hit within top k (c, K), AP (c,), INP (c,), has a hit (c,).
    ``removed`` (c, G): items taken out of each query's gallery (ranked last, never a hit)."""
    if removed is not None:
        sim = sim.masked_fill(removed, float("-inf"))
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices  # (c, G)
    matches = gallery_pids[order] == query_pids[:, None]  # (c, G) hit at each rank
    if removed is not None:
        matches &= ~removed.gather(1, order)
    del order
    num_pos = matches.sum(1)  # (c,)
    # float32 counts are exact up to 2**24 gallery items; cheaper than int64 and divisible in place.
    hits = matches.cumsum(1, dtype=torch.float32)  # (c, G) hits within the top r
    hit_at_k = hits[:, k_cols] > 0  # (c, K)
    last = torch.where(matches, ranks, 0.0).amax(1)  # (c,) rank of the last hit, 0 if none
    hits.div_(ranks).mul_(matches)  # precision at each hit's rank, 0 at misses
    ap = hits.sum(1) / num_pos.clamp(min=1)  # (c,)
    inp = num_pos / last.clamp(min=1)  # (c,)
    return hit_at_k, ap, inp, num_pos > 0


def _similarity_chunks(
    query_embeds: torch.Tensor, gallery_embeds: torch.Tensor, chunk_size: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (start row, (c, G) dot products) for consecutive blocks of queries."""
    gallery_t = gallery_embeds.T  # (D, G)
    for start in range(0, len(query_embeds), chunk_size):
        yield start, query_embeds[start : start + chunk_size] @ gallery_t


def _check_embeds(
    query_embeds: ArrayLike, gallery_embeds: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor]:
    gallery_embeds = torch.as_tensor(gallery_embeds)
    query_embeds = torch.as_tensor(query_embeds)
    for name, x in (("query_embeds", query_embeds), ("gallery_embeds", gallery_embeds)):
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(
                f"{name} must be a 2-D floating-point (num, dim) matrix, "
                f"got shape {tuple(x.shape)} and dtype {x.dtype}"
            )
    if query_embeds.shape[1] != gallery_embeds.shape[1]:
        raise ValueError(
            f"query_embeds have dimension {query_embeds.shape[1]} but gallery_embeds have "
            f"{gallery_embeds.shape[1]}"
        )
    query_embeds = query_embeds.to(device=gallery_embeds.device, dtype=gallery_embeds.dtype)
    return query_embeds, gallery_embeds


def _check_pids(
    query_pids: ArrayLike,
    gallery_pids: ArrayLike,
    num_queries: int,
    num_gallery: int,
    device: torch.device,
    names: tuple[str, str] = ("query_pids", "gallery_pids"),
) -> tuple[torch.Tensor, torch.Tensor]:
    checked = []
    for name, pids, expected, what in (
        (names[0], query_pids, num_queries, "queries (rows)"),
        (names[1], gallery_pids, num_gallery, "gallery items (columns)"),
    ):
        pids = torch.as_tensor(pids)
        if pids.dim() == 1 and len(pids) != expected:
            raise ValueError(f"{name} has {len(pids)} entries but there are {expected} {what}")
        if expected == 0:
            raise ValueError(f"{name} is empty: nothing to rank")
        is_integer = not (pids.is_floating_point() or pids.is_complex() or pids.dtype == torch.bool)
        if pids.dim() != 1 or not is_integer:
            raise ValueError(
                f"{name} must be a 1-D integer tensor, got shape {tuple(pids.shape)} "
                f"and dtype {pids.dtype}"
            )
        checked.append(pids.to(device))
    return checked[0], checked[1]


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, Integral) or k < 1 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive integers, got {ks!r}")
    return tuple(int(k) for k in ks)


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size
