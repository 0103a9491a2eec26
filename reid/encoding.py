"""Encode an evaluation split across processes: every gallery image once, every query caption once.

Gallery images and query captions are sharded contiguously over the processes (``ShardSampler``),
encoded through the model's ``forward`` (so ZeRO-3 gathers its partitioned weights), gathered in
rank order and truncated to the split's size, so every sample is counted exactly once.

A query is encoded three ways, one ``forward`` call each: the whole caption (``full``), its
identity part (``id``) and its clothing part (``cloth``, a zero vector when the caption has
none): the retrieval modes of :mod:`reid.retrieval` combine them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from reid.data import keys

QUERY_FIELDS = {
    "full": (keys.INPUT_IDS, keys.ATTENTION_MASK),
    "id": (keys.ID_INPUT_IDS, keys.ID_ATTENTION_MASK),
    "cloth": (keys.CLOTH_INPUT_IDS, keys.CLOTH_ATTENTION_MASK),
}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _gather(local: dict[str, list[Tensor]], accelerator: Any, total: int) -> dict[str, Tensor]:
    """Concatenate this rank's pieces, gather them in rank order, cut the shard padding off."""
    out = {name: torch.cat(parts) for name, parts in local.items()}
    if accelerator.num_processes > 1:
        out = {name: accelerator.gather(v.contiguous()) for name, v in sorted(out.items())}
    return {name: v[:total] for name, v in out.items()}


@torch.no_grad()
def encode_gallery(model: torch.nn.Module, loader: Any, accelerator: Any, total: int) -> tuple[dict[str, Tensor], Tensor]:
    """Everything the model's image dispatch returns (``image_embeds``, ``id_embeds``, and with a
    cloth branch ``cloth_embeds`` / ``cloth_image_embeds``) for the ``total`` gallery images, and
    their pids, in dataset order on every rank."""
    local: dict[str, list[Tensor]] = {keys.PIDS: []}
    for batch in loader:
        batch = _to_device(batch, accelerator.device)
        with accelerator.autocast():
            out = model({keys.IMAGES: batch[keys.IMAGES]})
        for name, value in out.items():
            local.setdefault(name, []).append(value.float())
        local[keys.PIDS].append(batch[keys.PIDS])
    if not local[keys.PIDS]:  # an empty shard: nothing to gather (the split has fewer images than ranks)
        return {}, torch.zeros(0, dtype=torch.long, device=accelerator.device)
    out = _gather(local, accelerator, total)
    return out, out.pop(keys.PIDS)


@torch.no_grad()
def encode_queries(
    model: torch.nn.Module, loader: Any, accelerator: Any, total: int, fields: Sequence[str] = tuple(QUERY_FIELDS)
) -> tuple[dict[str, Tensor], Tensor]:
    """``{field: (total, E)}`` text embeddings of the query captions for each of ``fields``
    (``full``, ``id``, ``cloth``; a caption without a clothing part has a zero ``cloth`` row),
    and their pids, in dataset order on every rank."""
    local: dict[str, list[Tensor]] = {keys.PIDS: []}
    for batch in loader:
        batch = _to_device(batch, accelerator.device)
        for field in fields:
            ids, mask = QUERY_FIELDS[field]
            with accelerator.autocast():
                out = model({keys.INPUT_IDS: batch[ids], keys.ATTENTION_MASK: batch[mask]})
            emb = out["text_embeds"].float()
            if field == "cloth":  # a model with separate clothing heads embeds the clothing part with its own
                emb = out.get("cloth_text_embeds", out["text_embeds"]).float()
                emb = emb * batch[keys.CLOTH_VALID][:, None].to(emb.dtype)
            local.setdefault(field, []).append(emb)
        local[keys.PIDS].append(batch[keys.PIDS])
    out = _gather(local, accelerator, total)
    return out, out.pop(keys.PIDS)
