"""Text-to-image retrieval evaluation across processes: encode once, rank with IRRA's metrics.

Gallery images and query captions are sharded contiguously over the processes (``ShardSampler``),
encoded through the model's ``forward`` (so ZeRO-3 gathers its partitioned weights), gathered in
rank order and truncated to the split's size, so every sample is counted exactly once.
"""

from __future__ import annotations

from typing import Any

import torch

from reid.data import keys
from reid.metrics import rank_from_embeddings


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def encode(model: torch.nn.Module, loader: Any, accelerator: Any, kind: str, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed every sample of ``loader`` (``kind`` = "image" or "text"); returns (embeds, pids) of
    length ``total`` on every rank, in dataset order."""
    field = "image_embeds" if kind == "image" else "text_embeds"
    embeds, pids = [], []
    for batch in loader:
        batch = _to_device(batch, accelerator.device)
        inputs = {keys.IMAGES: batch[keys.IMAGES]} if kind == "image" else {
            keys.INPUT_IDS: batch[keys.INPUT_IDS],
            keys.ATTENTION_MASK: batch[keys.ATTENTION_MASK],
        }
        with accelerator.autocast():
            out = model(inputs)[field]
        embeds.append(out.float())
        pids.append(batch[keys.PIDS])
    local_embeds = torch.cat(embeds) if embeds else torch.zeros(0, 1, device=accelerator.device)
    local_pids = torch.cat(pids) if pids else torch.zeros(0, dtype=torch.long, device=accelerator.device)
    if accelerator.num_processes > 1:
        local_embeds = accelerator.gather(local_embeds.contiguous())
        local_pids = accelerator.gather(local_pids.contiguous())
    return local_embeds[:total], local_pids[:total]


@torch.no_grad()
def evaluate(model: torch.nn.Module, eval_data: Any, accelerator: Any, chunk_size: int = 1024) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP (percent) of text→image retrieval on ``eval_data`` (see build_eval_data)."""
    was_training = model.training
    model.eval()
    try:
        gallery, gallery_pids = encode(model, eval_data.gallery_loader, accelerator, "image", len(eval_data.gallery))
        queries, query_pids = encode(model, eval_data.query_loader, accelerator, "text", len(eval_data.queries))
    finally:
        model.train(was_training)
    # Similarity is computed chunk by chunk over queries: never the full (Q, G) matrix (ICFG-PEDES).
    return rank_from_embeddings(queries, gallery, query_pids, gallery_pids, chunk_size=chunk_size)
