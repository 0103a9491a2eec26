"""The Hugging Face encoders: a ViT for images, BERT for text.

Either loaded from a local directory (``local_files_only``: nothing is downloaded during training)
or built from a size preset with random weights (tests, the synthetic default, benchmarks without
weights). Both use PyTorch's SDPA attention. Loading is strict (:mod:`reid.model.loading`): the
directory must hold a ViT / BERT (its ``config.json`` ``model_type``) and every tensor must fit.

``transformers`` is imported inside the builders: importing it costs several seconds on CPU, and
code that only needs the model's types (or a spawned test process) should not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reid.config import EncoderConfig
from reid.errors import ConfigError
from reid.model.loading import load_strict, local_dir, model_type

PATCH_SIZE = 16  # a preset is a /16 ViT, like the seed's vit-base-patch16-224, unless patch_size says
TEXT_MAX_POSITIONS = 512  # BERT's position table; data.text_max_length must stay below it


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    mlp: int


PRESETS = {
    "tiny": Preset(hidden=64, layers=2, heads=4, mlp=128),  # trains a step on CPU in ~0.1 s
    "small": Preset(hidden=384, layers=12, heads=6, mlp=1536),  # ViT-S/16 sizes
    "base": Preset(hidden=768, layers=12, heads=12, mlp=3072),  # ViT-B/16 and BERT-base sizes
}

def _check_patch_multiple(image_size: tuple[int, int], patch: int) -> None:
    if image_size[0] % patch or image_size[1] % patch:
        raise ConfigError(
            f"data.image_size: {tuple(image_size)} must be multiples of the ViT patch size ({patch})"
        )


def build_image_encoder(
    cfg: EncoderConfig, image_size: tuple[int, int], where: str = "model.image_encoder"
) -> nn.Module:
    """A ``ViTModel`` (no pooler) taking ``(B, 3, H, W)`` images of ``image_size = (H, W)``."""
    from transformers import ViTConfig, ViTModel

    image_size = (int(image_size[0]), int(image_size[1]))
    if cfg.path:
        root = local_dir(cfg.path, where, "image")
        model_type(root, where, "image")
        encoder = load_strict(ViTModel, root, where, "image", add_pooling_layer=False)
        patch = encoder.config.patch_size
        _check_patch_multiple(image_size, patch if isinstance(patch, int) else patch[0])
        resize_position_embeddings(encoder, image_size)
    else:
        patch = cfg.patch_size or PATCH_SIZE
        _check_patch_multiple(image_size, patch)
        p = PRESETS[cfg.preset]
        config = ViTConfig(
            hidden_size=p.hidden,
            num_hidden_layers=cfg.layers or p.layers,
            num_attention_heads=p.heads,
            intermediate_size=p.mlp,
            image_size=list(image_size),  # non-square sizes are native for a preset
            patch_size=patch,
            attn_implementation="sdpa",
        )
        encoder = ViTModel(config, add_pooling_layer=False)
    if cfg.gradient_checkpointing:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return encoder


@torch.no_grad()
def resize_position_embeddings(encoder: nn.Module, image_size: tuple[int, int]) -> None:
    """Interpolate a ViT's patch position embeddings to ``image_size`` once, in place.

    Bicubic on the patch grid (the class token's embedding is kept), e.g. 14x14 (224x224) ->
    24x8 (384x128). Doing it at load time, not through ``interpolate_pos_encoding`` on every
    forward, keeps the step free of the resize and makes the saved model self-describing.
    """
    emb = encoder.embeddings
    old_size = tuple(emb.patch_embeddings.image_size)
    if old_size == tuple(image_size):
        return
    ph, pw = emb.patch_embeddings.patch_size
    old_grid = (old_size[0] // ph, old_size[1] // pw)
    new_grid = (image_size[0] // ph, image_size[1] // pw)
    pos = emb.position_embeddings  # (1, 1 + gh*gw, D)
    dim = pos.shape[-1]
    grid = pos[:, 1:].reshape(1, *old_grid, dim).permute(0, 3, 1, 2).float()  # (1, D, gh, gw)
    grid = nn.functional.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos.dtype)
    emb.position_embeddings = nn.Parameter(torch.cat([pos[:, :1], grid], dim=1))
    emb.patch_embeddings.image_size = tuple(image_size)
    emb.patch_embeddings.num_patches = new_grid[0] * new_grid[1]
    emb.image_size = tuple(image_size)
    encoder.config.image_size = list(image_size)


def build_text_encoder(
    cfg: EncoderConfig,
    *,
    vocab_size: int | None = None,
    pad_token_id: int = 0,
    where: str = "model.text_encoder",
) -> nn.Module:
    """A ``BertModel`` (no pooler); a preset needs the tokenizer's ``vocab_size``."""
    from transformers import BertConfig, BertModel

    if cfg.path:
        root = local_dir(cfg.path, where, "text")
        model_type(root, where, "text")
        encoder = load_strict(BertModel, root, where, "text", add_pooling_layer=False)
        if vocab_size is not None and vocab_size > encoder.config.vocab_size:
            raise ConfigError(
                f"{where}.path: '{cfg.path}' has {encoder.config.vocab_size} token embeddings but the "
                f"tokenizer (data.tokenizer) has {vocab_size}; use the encoder's own tokenizer"
            )
    else:
        if vocab_size is None:
            raise ValueError(f"{where}: building preset {cfg.preset!r} needs the tokenizer's vocab_size")
        p = PRESETS[cfg.preset]
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=p.hidden,
            num_hidden_layers=cfg.layers or p.layers,
            num_attention_heads=p.heads,
            intermediate_size=p.mlp,
            max_position_embeddings=TEXT_MAX_POSITIONS,
            pad_token_id=pad_token_id,
            # No dropout inside a preset encoder, like the ViT presets (and ViTConfig's defaults);
            # a pretrained BERT keeps the dropout of its own config.
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation="sdpa",
        )
        encoder = BertModel(config, add_pooling_layer=False)
    if cfg.gradient_checkpointing:
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return encoder


def encoders_from_configs(image_config, text_config) -> tuple[nn.Module, nn.Module]:
    """ViT and BERT with random weights from saved Hugging Face configs (an export's encoders/)."""
    from transformers import BertModel, ViTModel

    image_config._attn_implementation = "sdpa"
    text_config._attn_implementation = "sdpa"
    return ViTModel(image_config, add_pooling_layer=False), BertModel(text_config, add_pooling_layer=False)


def describe(cfg: EncoderConfig, where: str) -> str:
    """``model.image_encoder (path '/w/vit')`` or ``model.text_encoder (preset 'tiny')``."""
    return f"{where} (path '{cfg.path}')" if cfg.path else f"{where} (preset '{cfg.preset}')"
