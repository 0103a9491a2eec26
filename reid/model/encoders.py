"""The Hugging Face encoders: a ViT, CLIP's vision tower or a CNN (ResNet, ConvNeXt) for images,
BERT or CLIP's text tower for text.

Either loaded from a local directory (``local_files_only``: nothing is downloaded during training)
or built from a size preset with random weights (tests, the synthetic default, benchmarks without
weights). All use PyTorch's SDPA attention. Loading is strict (:mod:`reid.model.loading`): the
directory's ``config.json`` ``model_type`` picks the path (``vit`` / ``bert``; ``clip``,
``clip_vision_model``, ``clip_text_model`` for CLIP), and every tensor must fit.

A CLIP tower is loaded with its projection (``CLIPVisionModelWithProjection`` /
``CLIPTextModelWithProjection``): its feature is the projected ``image_embeds`` / ``text_embeds``
(``projection_dim`` wide, as IRRA uses them), the text pooled by transformers at the end-of-text
token. What differs from ViT/BERT follows the directory: the patch size, the 77-token context, the
tokenizer and the pixel statistics (its ``preprocessor_config.json``).

A CNN directory (``model_type`` ``resnet`` or ``convnext``, e.g. microsoft/resnet-50,
facebook/convnext-tiny-224) is loaded without its classifier; its feature is the globally pooled
last stage (``pooler_output``, ``hidden_sizes[-1]`` wide). It takes any image size (no position
table), has no [CLS] token, and its BatchNorm (ResNet) is synchronised across processes like the
heads' (:mod:`reid.model.norm`).

``transformers`` is imported inside the builders: importing it costs several seconds on CPU, and
code that only needs the model's types (or a spawned test process) should not pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from reid.config import EncoderConfig
from reid.errors import ConfigError
from reid.model.loading import OTHER_TOWER, load_strict, local_dir, model_type

PATCH_SIZE = 16  # a preset is a /16 ViT, like the seed's vit-base-patch16-224, unless patch_size says
TEXT_MAX_POSITIONS = 512  # BERT's position table; data.text_max_length must stay below it


@dataclass(frozen=True)
class Preset:
    hidden: int
    layers: int
    heads: int
    mlp: int


def preset_sizes(cfg: EncoderConfig, where: str) -> Preset:
    """The preset's sizes with the config's ``layers`` / ``hidden`` overrides (0 = the preset's);
    the MLP keeps the preset's hidden:MLP ratio, the number of heads stays."""
    p = PRESETS[cfg.preset]
    hidden = cfg.hidden or p.hidden
    if hidden % p.heads:
        raise ConfigError(f"{where}.hidden: {hidden} is not a multiple of preset {cfg.preset!r}'s {p.heads} attention heads")
    return Preset(hidden=hidden, layers=cfg.layers or p.layers, heads=p.heads, mlp=p.mlp * hidden // p.hidden)


PRESETS = {
    "tiny": Preset(hidden=64, layers=2, heads=4, mlp=128),  # trains a step on CPU in ~0.1 s
    "small": Preset(hidden=384, layers=12, heads=6, mlp=1536),  # ViT-S/16 sizes
    "base": Preset(hidden=768, layers=12, heads=12, mlp=3072),  # ViT-B/16 and BERT-base sizes
}


CNN_TYPES = ("resnet", "convnext")  # image encoders whose feature is the pooled last stage


def _model_type(encoder: nn.Module) -> str:
    return str(getattr(getattr(encoder, "config", None), "model_type", ""))


def is_clip(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is a CLIP tower (its config's ``model_type`` is ``clip_*``)."""
    return _model_type(encoder).startswith("clip")


def is_cnn(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is a CNN (ResNet, ConvNeXt) whose feature is ``pooler_output``."""
    return _model_type(encoder) in CNN_TYPES


def feature_width(encoder: nn.Module) -> int:
    """Width of the feature the model reads: CLIP's ``projection_dim``, a CNN's last stage
    (``hidden_sizes[-1]``), else ``hidden_size``."""
    config = encoder.config
    if is_clip(encoder):
        return config.projection_dim
    return config.hidden_sizes[-1] if is_cnn(encoder) else config.hidden_size


def image_features(encoder: nn.Module, pixel_values: Tensor) -> Tensor:
    """``(B, feature_width)`` image features: CLIP's projected [CLS] (``image_embeds``), a CNN's
    globally pooled last stage (``pooler_output``), else the ViT's [CLS] token."""
    out = encoder(pixel_values=pixel_values)
    if is_clip(encoder):
        return out.image_embeds
    if is_cnn(encoder):
        return out.pooler_output.flatten(1)  # ResNet pools to (B, C, 1, 1), ConvNeXt to (B, C)
    return out.last_hidden_state[:, 0]


def _check_patch_multiple(image_size: tuple[int, int], patch: int) -> None:
    if image_size[0] % patch or image_size[1] % patch:
        raise ConfigError(
            f"data.image_size: {tuple(image_size)} must be multiples of the ViT patch size ({patch})"
        )


def _pair(value: int | list | tuple) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def build_image_encoder(
    cfg: EncoderConfig, image_size: tuple[int, int], where: str = "model.image_encoder"
) -> nn.Module:
    """A ``ViTModel`` (no pooler), a ``CLIPVisionModelWithProjection``, a ``ResNetModel`` or a
    ``ConvNextModel`` taking ``(B, 3, H, W)`` images of ``image_size = (H, W)``; a loaded
    transformer has its position embeddings resized to it."""
    from transformers import ViTConfig, ViTModel

    image_size = (int(image_size[0]), int(image_size[1]))
    if cfg.path:
        root = local_dir(cfg.path, where, "image")
        kind = model_type(root, where, "image")
        if kind == "vit":
            encoder = load_strict(ViTModel, root, where, "image", add_pooling_layer=False)
            _check_patch_multiple(image_size, _pair(encoder.config.patch_size)[0])
            resize_position_embeddings(encoder, image_size)
        elif kind in CNN_TYPES:
            encoder = _load_cnn(root, kind, where, image_size)
        else:
            encoder = _load_clip_tower(root, kind, where, "image")
            _check_patch_multiple(image_size, _pair(encoder.config.patch_size)[0])
            resize_clip_position_embeddings(encoder, image_size)
    else:
        patch = cfg.patch_size or PATCH_SIZE
        _check_patch_multiple(image_size, patch)
        p = preset_sizes(cfg, where)
        config = ViTConfig(
            hidden_size=p.hidden,
            num_hidden_layers=p.layers,
            num_attention_heads=p.heads,
            intermediate_size=p.mlp,
            image_size=list(image_size),  # non-square sizes are native for a preset
            patch_size=patch,
            attn_implementation="sdpa",
        )
        encoder = ViTModel(config, add_pooling_layer=False)
    if cfg.gradient_checkpointing:
        if not encoder.supports_gradient_checkpointing:
            raise ConfigError(
                f"{where}.gradient_checkpointing: the {type(encoder).__name__} in '{cfg.path}' does not support "
                "gradient checkpointing in transformers; set it to false"
            )
        encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return encoder


def _load_cnn(root: Path, kind: str, where: str, image_size: tuple[int, int]) -> nn.Module:
    """A ``ResNetModel`` / ``ConvNextModel`` of a local directory (a ``...ForImageClassification``
    checkpoint's ``classifier`` is left out); ``image_size`` must leave its last stage at least one
    position per side."""
    from transformers import ConvNextModel, ResNetModel

    encoder = load_strict(ResNetModel if kind == "resnet" else ConvNextModel, root, where, "image", attn_implementation=None)
    # Every stage but the first halves the side after the stem's /4: the last one sees side / 2**(stages + 1).
    stride = 2 ** (len(encoder.config.depths) + 1)
    if min(image_size) < stride:
        raise ConfigError(
            f"data.image_size: {tuple(image_size)} is smaller than the {kind} in {where}.path ('{root}') "
            f"reduces to one position ({stride} pixels per side)"
        )
    return encoder


def _interpolate_grid(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """``(gh*gw, D)`` patch position embeddings -> ``(gh'*gw', D)``, bicubic on the patch grid."""
    dim = pos.shape[-1]
    grid = pos.reshape(1, *old_grid, dim).permute(0, 3, 1, 2).float()  # (1, D, gh, gw)
    grid = nn.functional.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], dim).to(pos.dtype)


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
    grid = _interpolate_grid(pos[0, 1:], old_grid, new_grid)[None]  # (1, gh'*gw', D)
    emb.position_embeddings = nn.Parameter(torch.cat([pos[:, :1], grid], dim=1))
    emb.patch_embeddings.image_size = tuple(image_size)
    emb.patch_embeddings.num_patches = new_grid[0] * new_grid[1]
    emb.image_size = tuple(image_size)
    encoder.config.image_size = list(image_size)


class PatchGridEmbeddings(nn.Module):
    """CLIP's vision embeddings on a fixed patch grid, square or not.

    transformers' ``CLIPVisionEmbeddings`` takes only square images of its config's one-int
    ``image_size`` (anything else needs ``interpolate_pos_encoding``, which resizes a square table on
    every forward). This replacement keeps its parameter names (``class_embedding``,
    ``patch_embedding``, ``position_embedding``), so state dicts do not change, and holds one
    position per patch of an ``(H, W)`` image: ``positions`` ``(1 + gh*gw, D)``, resized once at load.
    """

    def __init__(self, embeddings: nn.Module, image_size: tuple[int, int], positions: Tensor) -> None:
        super().__init__()
        self.config = embeddings.config
        self.embed_dim = embeddings.embed_dim
        self.patch_size = embeddings.patch_size
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.num_patches = (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)
        self.num_positions = self.num_patches + 1
        assert tuple(positions.shape) == (self.num_positions, self.embed_dim), positions.shape
        self.class_embedding = embeddings.class_embedding
        self.patch_embedding = embeddings.patch_embedding
        self.position_embedding = nn.Embedding.from_pretrained(positions, freeze=False)
        self.register_buffer("position_ids", torch.arange(self.num_positions)[None], persistent=False)

    def forward(self, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        size = tuple(pixel_values.shape[-2:])
        if interpolate_pos_encoding or size != self.image_size:
            raise ValueError(f"images of {size}: this encoder takes {self.image_size} (its position grid)")
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(pixel_values.to(weight.dtype)).flatten(2).transpose(1, 2)  # (B, gh*gw, D)
        cls = self.class_embedding.expand(pixel_values.shape[0], 1, -1)  # (B, 1, D)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(self.position_ids)


@torch.no_grad()
def resize_clip_position_embeddings(encoder: nn.Module, image_size: tuple[int, int]) -> None:
    """Give a CLIP vision tower a :class:`PatchGridEmbeddings` for ``image_size``, its position
    embeddings interpolated once (bicubic, the class position kept), e.g. 14x14 -> 24x8; the config
    then says ``image_size: [H, W]`` (see :func:`encoders_from_configs`)."""
    emb = encoder.vision_model.embeddings
    old_side, patch = emb.image_size, emb.patch_size  # transformers' table is a square of one side
    if (old_side, old_side) == tuple(image_size):
        return
    new_grid = (image_size[0] // patch, image_size[1] // patch)
    pos = emb.position_embedding.weight  # (1 + g*g, D)
    grid = _interpolate_grid(pos[1:], (old_side // patch, old_side // patch), new_grid)
    encoder.vision_model.embeddings = PatchGridEmbeddings(emb, image_size, torch.cat([pos[:1], grid]))
    encoder.config.image_size = list(image_size)


def _load_clip_tower(root: Path, kind: str, where: str, part: str) -> nn.Module:
    """One tower, with its projection, of a CLIP directory (``kind`` ``clip``: both towers; or
    ``clip_vision_model`` / ``clip_text_model``: that tower alone)."""
    from transformers import (
        CLIPConfig,
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    if kind == "clip":
        full = CLIPConfig.from_pretrained(str(root), local_files_only=True)
        config = full.vision_config if part == "image" else full.text_config
        # CLIPModel builds both projections from the top-level projection_dim; the sub-configs may
        # keep a default that differs from it.
        config.projection_dim = full.projection_dim
    else:
        config = (CLIPVisionConfig if part == "image" else CLIPTextConfig).from_pretrained(str(root), local_files_only=True)
    cls = CLIPVisionModelWithProjection if part == "image" else CLIPTextModelWithProjection
    tolerated = OTHER_TOWER[part] if kind == "clip" else ()
    return load_strict(cls, root, where, part, config=config, tolerated=tolerated)


def build_text_encoder(
    cfg: EncoderConfig,
    *,
    vocab_size: int | None = None,
    pad_token_id: int = 0,
    where: str = "model.text_encoder",
) -> nn.Module:
    """A ``BertModel`` (no pooler) or a ``CLIPTextModelWithProjection``; a preset needs the
    tokenizer's ``vocab_size``."""
    from transformers import BertConfig, BertModel

    if cfg.path:
        root = local_dir(cfg.path, where, "text")
        kind = model_type(root, where, "text")
        if kind == "bert":
            encoder = load_strict(BertModel, root, where, "text", add_pooling_layer=False)
        else:
            encoder = _load_clip_tower(root, kind, where, "text")
        if vocab_size is not None and vocab_size > encoder.config.vocab_size:
            raise ConfigError(
                f"{where}.path: '{cfg.path}' has {encoder.config.vocab_size} token embeddings but the "
                f"tokenizer (data.tokenizer) has {vocab_size}; use the encoder's own tokenizer"
            )
    else:
        if vocab_size is None:
            raise ValueError(f"{where}: building preset {cfg.preset!r} needs the tokenizer's vocab_size")
        p = preset_sizes(cfg, where)
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=p.hidden,
            num_hidden_layers=p.layers,
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


def align_end_of_text(encoder: nn.Module, eos_token_id: int | None, where: str) -> None:
    """Make a CLIP text tower pool at the tokenizer's end-of-text token.

    transformers pools at the first ``config.eos_token_id`` of each row, or, for configs saved
    before transformers#24773 (``eos_token_id: 2``, as openai/clip-vit-base-patch16's), at the
    largest token id. The tokenizer's own id is right in both cases, and in the config it is saved
    with the export. (Padding after it is never seen: the text tower's attention is causal.)
    """
    if eos_token_id is None:
        raise ConfigError(
            f"{where}: a CLIP text encoder is pooled at the tokenizer's end-of-text token, but the "
            "tokenizer (data.tokenizer, else the encoder's directory) has no eos_token"
        )
    encoder.config.eos_token_id = int(eos_token_id)
    encoder.text_model.eos_token_id = int(eos_token_id)


def encoders_from_configs(image_config, text_config) -> tuple[nn.Module, nn.Module]:
    """The encoders, with random weights, of saved Hugging Face configs (an export's encoders/):
    ViT, CLIP vision tower, ResNet or ConvNeXt; BERT or CLIP text tower; with the shapes their
    weights were saved with."""
    from transformers import BertModel, CLIPTextModelWithProjection, ConvNextModel, ResNetModel, ViTModel

    if image_config.model_type not in CNN_TYPES:  # a CNN has no attention
        image_config._attn_implementation = "sdpa"
    text_config._attn_implementation = "sdpa"
    if image_config.model_type == "clip_vision_model":
        image = _clip_vision_from_config(image_config)
    elif image_config.model_type == "resnet":
        image = ResNetModel(image_config)
    elif image_config.model_type == "convnext":
        image = ConvNextModel(image_config)
    else:
        image = ViTModel(image_config, add_pooling_layer=False)
    if text_config.model_type == "clip_text_model":
        text = CLIPTextModelWithProjection(text_config)
    else:
        text = BertModel(text_config, add_pooling_layer=False)
    return image, text


def _clip_vision_from_config(config) -> nn.Module:
    """A CLIP vision tower of a saved config whose ``image_size`` may be ``[H, W]``
    (:func:`resize_clip_position_embeddings` wrote it): transformers builds a square one, whose
    embeddings are then swapped for a :class:`PatchGridEmbeddings` of that grid."""
    from transformers import CLIPVisionModelWithProjection

    size = _pair(config.image_size)
    config.image_size = size[0] if size[0] == size[1] else config.patch_size
    encoder = CLIPVisionModelWithProjection(config)
    if size[0] != size[1]:
        emb = encoder.vision_model.embeddings
        rows = (size[0] // emb.patch_size) * (size[1] // emb.patch_size) + 1
        positions = emb.position_embedding.weight.new_zeros(rows, emb.embed_dim)  # the export's weights follow
        encoder.vision_model.embeddings = PatchGridEmbeddings(emb, size, positions)
    config.image_size = list(size) if size[0] != size[1] else size[0]
    return encoder


def describe(cfg: EncoderConfig, where: str) -> str:
    """``model.image_encoder (path '/w/vit')`` or ``model.text_encoder (preset 'tiny')``."""
    return f"{where} (path '{cfg.path}')" if cfg.path else f"{where} (preset '{cfg.preset}')"
