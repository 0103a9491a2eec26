"""The seed's AttentionGatedFusion: cross-attention both ways, a softmax gate, fc + LayerNorm.

Each modality is one token (the 256-d embedding), so the cross-attention attends over a single
key: its softmax weight is 1 and the attention output is ``out_proj(v_proj(other))``, a learned
linear map of the other modality. We keep the seed's structure exactly (the module is cheap and
the gate is what carries per-pair information).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reid.config import FusionConfig
from reid.errors import ConfigError

FUSION_TYPES = ("attention_gated", "none")


class AttentionGatedFusion(nn.Module):
    """Fuse an image and a text embedding of the same width ``dim`` into ``output_dim``."""

    def __init__(self, dim: int, num_heads: int = 4, output_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.image_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.text_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.norm_image = nn.LayerNorm(dim)
        self.norm_text = nn.LayerNorm(dim)
        self.gate = nn.Sequential(
            nn.Linear(dim * 2, dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dim, 2),
            nn.Softmax(dim=-1),
        )
        self.fc = nn.Linear(dim, output_dim)
        self.norm_final = nn.LayerNorm(output_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, image_features: Tensor, text_features: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, dim)`` x2 -> fused ``(B, output_dim)`` and gate weights ``(B, 2)`` [image, text]."""
        image_tok = image_features.unsqueeze(1)  # (B, 1, dim): one token per modality
        text_tok = text_features.unsqueeze(1)
        image_att, _ = self.image_attn(image_tok, text_tok, text_tok, need_weights=False)
        image_att = self.norm_image(image_att.squeeze(1) + image_features)  # (B, dim)
        text_att, _ = self.text_attn(text_tok, image_tok, image_tok, need_weights=False)
        text_att = self.norm_text(text_att.squeeze(1) + text_features)  # (B, dim)

        gate = self.gate(torch.cat([image_att, text_att], dim=-1))  # (B, 2), rows sum to 1
        fused = gate[:, 0:1] * image_att + gate[:, 1:2] * text_att  # (B, dim)
        fused = self.norm_final(self.fc(self.dropout(fused)))  # (B, output_dim)
        return fused, gate


def get_fusion_module(cfg: FusionConfig) -> AttentionGatedFusion | None:
    """Build the fusion module named by ``cfg.type`` (``"none"`` -> ``None``)."""
    if cfg.type == "attention_gated":
        return AttentionGatedFusion(cfg.dim, cfg.num_heads, cfg.output_dim, cfg.dropout)
    if cfg.type == "none":
        return None
    known = ", ".join(repr(t) for t in FUSION_TYPES)
    raise ConfigError(f"model.fusion.type: unknown fusion type {cfg.type!r} (known: {known})")
