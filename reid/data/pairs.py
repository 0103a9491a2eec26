"""Cloth-caption pairs: every training row's own clothing text (is_matched=1) and a negative one.

The negative (is_matched=0, batch keys ``neg_cloth_*``) is the clothing caption of a row of
**another identity** that has a clothing part (``cloth_valid``); it never comes from the row's own
identity. Two ways to draw it (``data.negatives``):

- ``"random"`` (the seed): uniform over the cloth-valid rows of other identities.
- ``"hard"``: uniform over the ``data.hard_topk`` clothing captions of other identities most
  similar to the row's own (TF-IDF cosine over the caption words). The candidates are computed
  once per table build and cached as the column ``neg_candidates`` (row indices). Identical
  captions are merged before the similarity is computed, and a caption identical to the row's own
  is never a candidate: it would describe the image correctly and make a false negative. Rows
  without a clothing part, and the rare row with no candidate, fall back to ``"random"``.

The draw takes a ``numpy.random.Generator`` seeded from the sampler's per-sample seed, so it is
reproducible, independent of the number of workers, and different at every epoch.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from typing import Optional, Sequence

import numpy as np
import torch

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_EXTRA = 16  # similar texts looked at beyond top-k before a full sort is needed
_CHUNK = 256  # query texts per similarity block: a block is (unique texts, _CHUNK) floats


class NegativeSampler:
    """Draws the row index of a negative clothing caption for a training row."""

    def __init__(
        self, pids: np.ndarray, cloth_valid: np.ndarray, candidates: Optional[Sequence[Sequence[int]]] = None
    ):
        self.pids = np.asarray(pids, dtype=np.int64)
        self.valid_rows = np.flatnonzero(np.asarray(cloth_valid, dtype=bool))
        assert len(np.unique(self.pids[self.valid_rows])) >= 2, "needs cloth captions of >= 2 identities"
        self.offsets: Optional[np.ndarray] = None
        if candidates is not None:  # flat arrays: cheap to pickle into DataLoader workers
            lists = [np.asarray(c, dtype=np.int64) for c in candidates]
            self.offsets = np.cumsum([0] + [len(c) for c in lists])
            self.flat = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)

    def draw(self, row: int, rng: np.random.Generator) -> int:
        """Row index of a cloth-valid row of another identity."""
        if self.offsets is not None:
            lo, hi = self.offsets[row], self.offsets[row + 1]
            if hi > lo:
                return int(self.flat[lo + int(rng.integers(hi - lo))])
        return self._draw_random(row, rng)

    def _draw_random(self, row: int, rng: np.random.Generator) -> int:
        pid = self.pids[row]
        for _ in range(32):  # rejection is exact and cheap unless one identity owns most rows
            pick = int(self.valid_rows[int(rng.integers(len(self.valid_rows)))])
            if self.pids[pick] != pid:
                return pick
        others = self.valid_rows[self.pids[self.valid_rows] != pid]
        return int(others[int(rng.integers(len(others)))])


def _tfidf(texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised TF-IDF rows (smooth idf) as a sparse CSR tensor (len(texts), vocabulary)."""
    vocab: dict[str, int] = {}
    crow, cols, counts = [0], [], []
    for text in texts:
        tf = Counter(vocab.setdefault(tok, len(vocab)) for tok in _TOKEN_RE.findall(text))
        cols.extend(tf.keys())
        counts.extend(tf.values())
        crow.append(len(cols))
    col = torch.tensor(cols, dtype=torch.int64)
    val = torch.tensor(counts, dtype=torch.float32)
    df = torch.bincount(col, minlength=len(vocab)).float()
    val = val * (torch.log((1 + len(texts)) / (1 + df)) + 1)[col]
    row = torch.repeat_interleave(torch.arange(len(texts)), torch.tensor(crow).diff())
    norm = torch.zeros(len(texts)).index_add_(0, row, val * val).sqrt().clamp_min(1e-12)
    val = val / norm[row]
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the ops used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.tensor(crow), col, val, size=(len(texts), max(len(vocab), 1)))


def hard_candidates(
    cloth_texts: Sequence[str], pids: Sequence[int], valid: Sequence[bool], topk: int
) -> list[list[int]]:
    """Per row: up to ``topk`` row indices of other identities with the most similar clothing text.

    Rows without a clothing part get an empty list. Identical (normalised) texts are computed once,
    and the similarity is taken block by block, so CUHK-PEDES' ~68k rows fit in a few hundred MB.
    """
    pids = np.asarray(pids, dtype=np.int64)
    text_of_row = np.full(len(pids), -1, dtype=np.int64)
    index: dict[str, int] = {}
    for r, (text, ok) in enumerate(zip(cloth_texts, valid)):
        if ok:
            text_of_row[r] = index.setdefault(" ".join(_TOKEN_RE.findall(text.lower())), len(index))
    unique = list(index)
    rows_of_text: list[list[int]] = [[] for _ in unique]
    for r in np.flatnonzero(text_of_row >= 0):
        rows_of_text[text_of_row[r]].append(int(r))
    out: list[list[int]] = [[] for _ in range(len(pids))]
    if len(unique) < 2:
        return out
    matrix = _tfidf(unique)  # (U, V)
    depth = min(topk + _EXTRA, len(unique) - 1)
    for start in range(0, len(unique), _CHUNK):
        stop = min(start + _CHUNK, len(unique))
        sims = _block(matrix, start, stop).T.contiguous()  # (chunk, U): top-k along rows is fast
        sims[torch.arange(stop - start), torch.arange(start, stop)] = -1.0  # never the same text
        ranked = torch.topk(sims, depth, dim=1).indices  # (chunk, depth)
        for j, u in enumerate(range(start, stop)):
            for pid in {int(pids[r]) for r in rows_of_text[u]}:
                picks = _pick(ranked[j].tolist(), pid, topk, rows_of_text, pids)
                if len(picks) < topk and depth < len(unique) - 1:
                    order = torch.argsort(sims[j], descending=True).tolist()
                    picks = _pick([v for v in order if v != u], pid, topk, rows_of_text, pids)
                for r in rows_of_text[u]:
                    if pids[r] == pid:
                        out[r] = picks
    return out


def _block(matrix: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Cosine similarities of every unique text to texts [start, stop): (U, stop - start)."""
    crow = matrix.crow_indices()
    lo, hi = int(crow[start]), int(crow[stop])
    rows = torch.repeat_interleave(torch.arange(stop - start), crow[start : stop + 1].diff())
    query = torch.zeros(matrix.shape[1], stop - start)  # (V, chunk), dense: small
    query[matrix.col_indices()[lo:hi], rows] = matrix.values()[lo:hi]
    return matrix @ query


def _pick(
    order: Sequence[int], pid: int, topk: int, rows_of_text: list[list[int]], pids: np.ndarray
) -> list[int]:
    """The first ``topk`` texts in ``order`` with a row of another identity (that row each)."""
    picks: list[int] = []
    for v in order:
        row = next((r for r in rows_of_text[v] if pids[r] != pid), None)
        if row is not None:
            picks.append(row)
            if len(picks) == topk:
                break
    return picks


def identity_neighbours(pids: Sequence[int], id_texts: Sequence[str], k: int) -> np.ndarray:
    """``(I, min(k, I - 1))`` for the I identities in sorted pid order: the indices of the ``k``
    identities whose identity texts (all of an identity's id captions, joined) are most similar
    (TF-IDF cosine), most similar first. Blockwise, so CUHK-PEDES' 11k identities stay small."""
    pids = np.asarray(pids, dtype=np.int64)
    order = np.argsort(pids, kind="stable")
    cuts = np.flatnonzero(np.diff(pids[order])) + 1
    texts = [" ".join(id_texts[r] for r in rows).lower() for rows in np.split(order, cuts)]
    depth = min(k, len(texts) - 1)
    if depth < 1:
        return np.zeros((len(texts), 0), dtype=np.int64)
    matrix = _tfidf(texts)  # (I, V)
    out = []
    for start in range(0, len(texts), _CHUNK):
        stop = min(start + _CHUNK, len(texts))
        sims = _block(matrix, start, stop).T.contiguous()  # (chunk, I)
        sims[torch.arange(stop - start), torch.arange(start, stop)] = -2.0  # never itself
        out.append(torch.topk(sims, depth, dim=1).indices)
    return torch.cat(out).numpy().astype(np.int64)
