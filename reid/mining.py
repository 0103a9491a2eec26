"""In-batch hard negatives, one pure function for the model's fusion head and the criterion's
``cloth_match``: for each query row, the most similar candidate that is a real negative.

A real negative belongs to **another person** and says something **different**: a text identical
to the row's own (two people in the same grey coat; two people both "a short young man with black
hair") describes the row's image correctly, so using it as a negative teaches the model to reject
a true description. Texts are compared by :func:`text_hashes` of their token ids (the data pipeline
tokenizes deterministically, so equal strings give equal ids), which can be gathered across
processes like any (N,) tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

_HASH_WIDTH = 512  # token positions the hash weights cover (longer texts reuse the weights cyclically)
_WEIGHTS: dict[torch.device, Tensor] = {}


def _weights(device: torch.device) -> Tensor:
    if device not in _WEIGHTS:
        g = torch.Generator().manual_seed(20261130)
        w = torch.randint(-(2**62), 2**62, (_HASH_WIDTH,), generator=g, dtype=torch.int64) | 1  # odd
        _WEIGHTS[device] = w.to(device)
    return _WEIGHTS[device]


@torch.no_grad()
def text_hashes(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(N, L) token ids and mask -> (N,) int64: equal for equal token sequences (padding ignored),
    a random linear hash modulo 2**64 otherwise (collisions ~ 2**-63 per pair)."""
    length = input_ids.shape[1]
    w = _weights(input_ids.device)
    w = w.repeat((length + _HASH_WIDTH - 1) // _HASH_WIDTH)[:length]
    tokens = (input_ids.long() + 1) * attention_mask.long()  # (N, L), 0 at padding
    return (tokens * w).sum(dim=1) + attention_mask.long().sum(dim=1)  # int64 wraps: a hash mod 2**64


@torch.no_grad()
def hardest_negatives(
    sim: Tensor, query_pids: Tensor, key_pids: Tensor, query_texts: Tensor | None = None,
    key_texts: Tensor | None = None, key_valid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per query row of ``sim`` (Q, K): the index of its most similar key of another person, whose
    text hash (``key_texts``, against ``query_texts``) differs and which is ``key_valid``; returns
    (index (Q,), has one (Q,) bool). A row without any such key gets index 0 and ``False``."""
    allowed = query_pids[:, None] != key_pids[None, :]  # (Q, K)
    if query_texts is not None:
        allowed &= query_texts[:, None] != key_texts[None, :]
    if key_valid is not None:
        allowed &= key_valid[None, :]
    index = sim.float().masked_fill(~allowed, float("-inf")).argmax(dim=1)
    return index, allowed.any(dim=1)
