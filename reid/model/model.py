"""T2IReIDModel: the seed's identity / clothing model, as one ``nn.Module`` holding everything trainable.

    image -> ViT -> [CLS] h (B, H)            (a CLIP vision tower: its projected image_embeds)
      h -> id_projection -> ReLU -> id_embeds (B, H) -> id_classifier -> id_logits
        id_projection(h detached) -> ReLU -> GRL -> id_adversary -> L2 -> id_adv_embeds   (id_adv)
    h -> cloth_projection -> ReLU -> cloth_embeds (B, H)
             -> GRL -> cloth_classifier -> cloth_adv_logits          (the identity adversary)
             -> [GRL if disentangle.grl == cloth_branch] -> cloth branch
      [id_embeds; cloth branch] -> shared_mlp -> image_mlp -> L2 -> image_embeds, cloth_image_embeds
    [id; cloth; neg_cloth text] -> BERT -> [CLS] -> shared_mlp -> text_mlp -> L2 -> *_text_embeds
                                  (a CLIP text tower: its projected text_embeds, at end-of-text)
    retrieval only: image_embeds -> clothing_eraser -> L2 -> invariant_image_embeds
                                  (model.clothing_eraser: fitted after training, reid/erasure.py)

Heads that only serve one loss term (the id and adversary classifiers, the seed's decoupling
projectors, the pair-matching bias, the fusion head) are built only when that term's weight is > 0:
nothing would train them otherwise, and unused parameters break DDP without
``find_unused_parameters``. Learnable scalars are ``[1]``-shaped :class:`Scalar` submodules (a 0-d
parameter crashes DeepSpeed 0.19.8; a submodule call lets ZeRO-3 gather it even outside forward).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid.config import LEARNABLE_TEMPERATURE_RANGE, DisentangleConfig, ModelConfig
from reid.data import keys
from reid.erasure import ClothingEraser
from reid.errors import ConfigError
from reid.model.encoders import (
    align_end_of_text,
    build_image_encoder,
    build_text_encoder,
    describe,
    encoders_from_configs,
    feature_width,
    image_features,
    is_clip,
)
from reid.model.fusion import get_fusion_module
from reid.model.grl import grad_reverse
from reid.mining import hardest_negatives, text_hashes
from reid.model.norm import convert_sync_batchnorm

ENCODER_PREFIXES = ("image_encoder.", "text_encoder.")  # parameters trained at optim.lr
# Retrieval-only batch keys: the fusion head's pair logit of aligned (image, text) embeddings through forward.
PAIR_IMAGE_EMBEDS = "pair_image_embeds"
PAIR_TEXT_EMBEDS = "pair_text_embeds"
_TEXT_KEYS = {
    "id": (keys.ID_INPUT_IDS, keys.ID_ATTENTION_MASK),
    "cloth": (keys.CLOTH_INPUT_IDS, keys.CLOTH_ATTENTION_MASK),
    "neg_cloth": (keys.NEG_CLOTH_INPUT_IDS, keys.NEG_CLOTH_ATTENTION_MASK),
}


class Scalar(nn.Module):
    """One learnable number, stored with shape ``[1]``; calling the module returns it."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.full((1,), float(value)))

    def forward(self) -> Tensor:
        return self.value


def projection_mlp(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """The seed's image_mlp / text_mlp: BN-ReLU-Dropout-Linear(in->out)-BN-ReLU-Dropout-Linear(out->out)."""
    return nn.Sequential(
        nn.BatchNorm1d(in_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(in_dim, out_dim),
        nn.BatchNorm1d(out_dim),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(out_dim, out_dim),
    )


@dataclass(frozen=True)
class Needs:
    """Which parts of forward the enabled loss terms use (weight 0 skips the computation)."""

    id_logits: bool
    cloth_branch: bool
    cloth_image: bool
    cloth_text: bool
    neg_cloth_text: bool
    adversary: bool
    id_adversary: bool
    id_words: bool
    seed_decouple: bool
    pair_bias: bool
    fusion: bool

    @staticmethod
    def of(dcfg: DisentangleConfig) -> "Needs":
        w = dcfg.loss_weights
        cloth_text = w.cloth > 0 or w.cloth_match > 0 or w.id_adv > 0
        return Needs(
            id_logits=w.cls > 0,
            cloth_branch=w.cloth > 0 or w.cloth_match > 0 or w.cloth_adv > 0 or w.decouple > 0,
            cloth_image=w.cloth > 0 or w.cloth_match > 0,
            cloth_text=cloth_text,
            neg_cloth_text=w.cloth_match > 0 and dcfg.cloth_match.form == "pair",
            adversary=w.cloth_adv > 0,
            id_adversary=w.id_adv > 0,
            id_words=w.id_words > 0,
            seed_decouple=w.decouple > 0 and dcfg.decouple.form == "seed",
            pair_bias=w.cloth_match > 0 and dcfg.cloth_match.form == "pair",
            fusion=w.fusion_match > 0,
        )


@dataclass(frozen=True)
class HeadSettings:
    """All the model takes from the loss configuration, derived once (:meth:`of`): which outputs
    the enabled terms need, where the GRL sits, the seed-form projector width and the temperature.
    The model holds no loss weights and no schedule (the trainer sets ``grl_alpha``)."""

    needs: Needs
    grl_on_branch: bool  # disentangle.grl == "cloth_branch"
    projector_dim: int  # disentangle.decouple.projector_dim
    temperature: float
    learnable_temperature: bool

    @staticmethod
    def of(dcfg: DisentangleConfig) -> "HeadSettings":
        return HeadSettings(Needs.of(dcfg), dcfg.grl == "cloth_branch", dcfg.decouple.projector_dim,
                            dcfg.temperature, dcfg.learnable_temperature)


class T2IReIDModel(nn.Module):
    """Identity / clothing text-to-image ReID model; see the module docstring and docs/model.md.

    ``forward(batch)`` takes the training batch (reid/data/keys.py) and returns a dict:
    ``image_embeds``, ``cloth_image_embeds``, ``id_text_embeds``, ``cloth_text_embeds``,
    ``neg_cloth_text_embeds``, ``id_adv_embeds`` (B, E) L2-normalised; ``id_logits``,
    ``cloth_adv_logits`` (B, C); ``id_word_logits`` (B, V) (V = the text vocabulary);
    ``id_embeds``, ``cloth_embeds`` (B, H) raw branch features (``cloth_embeds`` before any GRL);
    ``decouple_id`` / ``decouple_cloth`` (B, P) seed-form projector outputs; ``cloth_match_bias``
    and ``temperature`` (1,); with ``fusion_match``: ``fused_embeds`` (B, E'), ``gate_image_weight``
    (B,), ``fusion_pos_logits`` (B,), ``fusion_neg_logits`` (2B,), ``fusion_neg_valid`` (2B,) bool.
    Keys of disabled terms are absent.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        *,
        hidden_size: int,
        cfg: ModelConfig,
        heads: HeadSettings,
        num_classes: int,
        pad_token_id: int = 0,
        image_width: int | None = None,
    ) -> None:
        super().__init__()
        needs = self.needs = heads.needs
        if needs.fusion and cfg.fusion.type == "none":
            raise ConfigError(
                "disentangle.loss_weights.fusion_match: > 0 needs a fusion module, "
                "but model.fusion.type is 'none'"
            )
        # H: the text encoder's feature width, which shared_mlp reads; the image feature (image_width
        # wide, H unless told) reaches H through the branch projections, as a CLIP tower's projection does
        H, C, W = hidden_size, num_classes, image_width or hidden_size
        self.hidden_size = hidden_size
        self.pad_token_id = pad_token_id
        self.text_pool = cfg.text_pool
        self.text_is_clip = is_clip(text_encoder)
        self.grl_on_branch = heads.grl_on_branch
        self.cloth_encoder_grad = cfg.cloth_encoder_grad
        # The GRL strength, a Python float (forward never syncs): the trainer sets it at the start of
        # each epoch from disentangle.alpha, as it sets the learning rate; the model owns no schedule.
        self.grl_alpha = 0.0  # build_model starts it at disentangle.alpha's epoch-0 value

        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        # model.*_encoder.frozen: the loaded weights stay as they are (train() keeps them in eval mode)
        self.frozen = frozenset(name for name, enc in (("image_encoder", cfg.image_encoder), ("text_encoder", cfg.text_encoder))
                                if enc.frozen)
        for name in self.frozen:
            getattr(self, name).requires_grad_(False).eval()
        self.id_projection = nn.Linear(W, H)
        self.id_classifier = nn.Linear(H, C) if needs.id_logits else None
        self.cloth_projection = nn.Linear(W, H) if needs.cloth_branch else None
        self.cloth_classifier = nn.Linear(H, C) if needs.adversary else None
        # id_adv: reads clothing from the identity features, into the text embedding space
        self.id_adversary = nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Linear(H, cfg.embed_dim)) if needs.id_adversary else None
        # id_words: the identity features name the words of their identity text (one logit per token)
        vocab = getattr(getattr(text_encoder, "config", None), "vocab_size", None)
        if needs.id_words and vocab is None:
            raise ConfigError("disentangle.loss_weights.id_words: > 0 needs a text encoder with a vocab_size")
        self.id_word_head = nn.Linear(H, vocab) if needs.id_words else None
        proj = heads.projector_dim
        self.id_embed_projector = nn.Linear(H, proj) if needs.seed_decouple else None
        self.cloth_embed_projector = nn.Linear(H, proj) if needs.seed_decouple else None
        self.shared_mlp = nn.Linear(H, cfg.shared_dim)
        self.image_mlp = projection_mlp(cfg.shared_dim, cfg.embed_dim, cfg.mlp_dropout)
        self.text_mlp = projection_mlp(cfg.shared_dim, cfg.embed_dim, cfg.mlp_dropout)
        # model.cloth_heads: separate -> the clothing image and clothing text embeddings get their own heads
        separate = cfg.cloth_heads == "separate" and (needs.cloth_image or needs.cloth_text)
        self.cloth_shared_mlp = nn.Linear(H, cfg.shared_dim) if separate else None
        self.cloth_image_mlp = projection_mlp(cfg.shared_dim, cfg.embed_dim, cfg.mlp_dropout) if separate and needs.cloth_image else None
        self.cloth_text_mlp = projection_mlp(cfg.shared_dim, cfg.embed_dim, cfg.mlp_dropout) if separate and needs.cloth_text else None
        self.cloth_match_bias = Scalar(0.0) if needs.pair_bias else None  # threshold at cos = 0
        self.fusion = get_fusion_module(cfg.fusion) if needs.fusion else None
        # model.clothing_eraser: fitted after training (reid/erasure.py); only retrieval applies it
        self.clothing_eraser = ClothingEraser(cfg.embed_dim) if cfg.clothing_eraser.rank > 0 else None
        self.scale = Scalar(1.0) if needs.fusion else None
        self.match_head = nn.Linear(cfg.fusion.output_dim, 1) if needs.fusion else None
        if heads.learnable_temperature:
            self.log_temperature = Scalar(math.log(heads.temperature))
        else:
            self.log_temperature = None
            self.register_buffer("fixed_temperature", torch.full((1,), heads.temperature), persistent=False)

    def train(self, mode: bool = True) -> "T2IReIDModel":
        super().train(mode)
        for name in self.frozen:  # dropout off and BatchNorm statistics kept, in training too
            getattr(self, name).eval()
        return self

    def compile_encoders(self) -> None:
        """``torch.compile`` both encoders in place (``Module.compile`` keeps state-dict names)."""
        self.image_encoder.compile()
        self.text_encoder.compile()

    # ---------------------------------------------------------------------------------- schedule
    def temperature(self) -> Tensor:
        """The contrastive temperature, shape ``(1,)`` (fixed, or learnable and clamped)."""
        if self.log_temperature is None:
            return self.fixed_temperature
        lo, hi = LEARNABLE_TEMPERATURE_RANGE
        return self.log_temperature().clamp(math.log(lo), math.log(hi)).exp()

    # ---------------------------------------------------------------------------------- retrieval
    def encode_image(self, images: Tensor) -> Tensor:
        """``(N, 3, H, W)`` -> identity embeddings ``(N, E)``, L2-normalised."""
        return self._image_head(F.relu(self.id_projection(self._image_features(images))))

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(N, L)`` token ids and mask -> text embeddings ``(N, E)``, L2-normalised."""
        return self._text_head(self._pooled_text(input_ids, attention_mask))

    def _pooled_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``(N, L)`` -> the text encoder's pooled feature ``(N, H)`` (``model.text_pool``; a CLIP
        text tower's own ``text_embeds``, taken at the end-of-text token)."""
        with torch.no_grad() if "text_encoder" in self.frozen else contextlib.nullcontext():
            return self._pooled_text_of(input_ids, attention_mask)

    def _pooled_text_of(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.text_is_clip:
            # No mask: the tower's attention is causal and rows are padded on the right, so the
            # end-of-text position never sees the padding (a mask would only cost a host sync).
            return self.text_encoder(input_ids=input_ids).text_embeds  # (N, P)
        mask = attention_mask
        if getattr(getattr(self.text_encoder, "config", None), "_attn_implementation", None) == "sdpa":
            # transformers passes a 4-D mask through untouched; a 2-D one costs a host sync
            # (`mask.all()`, to drop an all-ones mask) on every call.
            mask = attention_mask.bool()[:, None, None, :]  # (N, 1, 1, L)
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (N, L, H)
        if self.text_pool == "mean":
            weight = attention_mask.to(hidden.dtype)[..., None]  # (N, L, 1)
            return (hidden * weight).sum(1) / weight.sum(1).clamp(min=1)
        return hidden[:, 0]  # [CLS], the seed's

    def match_scores(self, image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """The fusion head's pair logits ``(N,)`` of aligned pairs (row i with row i). The head is
        trained when ``fusion_match`` > 0; no retrieval path ranks with it."""
        if self.fusion is None:
            raise ConfigError(
                "disentangle.loss_weights.fusion_match: is 0 for this model, so it has no trained "
                "fusion head to score pairs with"
            )
        fused, _ = self._fuse(image_embeds, text_embeds)
        return self.match_head(fused).squeeze(-1)

    # ---------------------------------------------------------------------------------- training
    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Training batch -> all outputs (see the class docstring). Retrieval goes through forward
        too, so that ZeRO-3 gathers the partitioned weights: a batch holding only ``images`` returns
        ``{"image_embeds", "id_embeds"}`` (+ ``"cloth_embeds"`` with a cloth branch, +
        ``"cloth_image_embeds"`` when the cloth branch is matched to clothing text, +
        ``"invariant_image_embeds"``, the identity embedding through the clothing eraser, when the
        model has one: :mod:`reid.erasure`); one holding only
        ``input_ids``/``attention_mask`` returns ``{"text_embeds"}``; one holding only
        ``pair_image_embeds``/``pair_text_embeds`` returns ``{"match_scores"}`` (:meth:`match_scores`)."""
        if keys.ID_INPUT_IDS not in batch:
            return self._retrieval(batch)
        out, cloth_branch = self._branches(self._image_features(batch[keys.IMAGES]))
        out.update(self._image_embeddings(out["id_embeds"], cloth_branch if self.needs.cloth_image else None))

        fields = ["id"]
        fields += ["cloth"] if self.needs.cloth_text else []
        fields += ["neg_cloth"] if self.needs.neg_cloth_text else []
        for name, emb in zip(fields, self._encode_fields(batch, fields)):
            out[f"{name}_text_embeds"] = emb

        out["temperature"] = self.temperature()
        if self.cloth_match_bias is not None:
            out["cloth_match_bias"] = self.cloth_match_bias()
        if self.fusion is not None:
            out.update(self._fusion_outputs(out["image_embeds"], out["id_text_embeds"], batch))
        return out

    def _retrieval(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if PAIR_IMAGE_EMBEDS in batch:
            return {"match_scores": self.match_scores(batch[PAIR_IMAGE_EMBEDS], batch[PAIR_TEXT_EMBEDS])}
        if keys.IMAGES not in batch:
            pooled = self._pooled_text(batch[keys.INPUT_IDS], batch[keys.ATTENTION_MASK])
            out = {"text_embeds": self._text_head(pooled)}
            if self.cloth_text_mlp is not None:  # separate clothing heads: the clothing-part embedding too
                out["cloth_text_embeds"] = self._cloth_text_head(pooled)
            return out
        feats = self._image_features(batch[keys.IMAGES])  # (N, H)
        id_embeds = F.relu(self.id_projection(feats))  # (N, H), as encode_image
        if self.cloth_projection is None:
            out = {"image_embeds": self._image_head(id_embeds), "id_embeds": id_embeds}
        else:
            cloth_embeds = F.relu(self.cloth_projection(feats))  # (N, H) raw branch features (leakage probes)
            out = {"id_embeds": id_embeds, "cloth_embeds": cloth_embeds}
            # the standard mode's clothing half, through the same head calls as in training
            out.update(self._image_embeddings(id_embeds, cloth_embeds if self.needs.cloth_image else None))
        if self.clothing_eraser is not None:
            out["invariant_image_embeds"] = F.normalize(self.clothing_eraser(out["image_embeds"]), dim=-1)
        return out

    def _image_embeddings(self, id_embeds: Tensor, cloth_embeds: Tensor | None) -> dict[str, Tensor]:
        """``image_embeds`` (and ``cloth_image_embeds`` when ``cloth_embeds`` is given). With shared
        heads both branches go through shared_mlp/image_mlp in one call: BatchNorm sees id and cloth
        rows together, the same mixture its running statistics (used at eval) hold."""
        if cloth_embeds is None:
            return {"image_embeds": self._image_head(id_embeds)}
        if self.cloth_image_mlp is not None:
            cloth = F.normalize(self.cloth_image_mlp(self.cloth_shared_mlp(cloth_embeds)), dim=-1)
            return {"image_embeds": self._image_head(id_embeds), "cloth_image_embeds": cloth}
        rows = self._image_head(torch.cat([id_embeds, cloth_embeds]))  # (2N, E)
        image, cloth = rows.split(id_embeds.shape[0])
        return {"image_embeds": image, "cloth_image_embeds": cloth}

    def _image_features(self, images: Tensor) -> Tensor:
        with torch.no_grad() if "image_encoder" in self.frozen else contextlib.nullcontext():
            return image_features(self.image_encoder, images)  # (B, H): [CLS], CLIP's projection or a CNN's pool

    def _image_head(self, x: Tensor) -> Tensor:
        return F.normalize(self.image_mlp(self.shared_mlp(x)), dim=-1)

    def _text_head(self, x: Tensor) -> Tensor:
        return F.normalize(self.text_mlp(self.shared_mlp(x)), dim=-1)

    def _cloth_text_head(self, x: Tensor) -> Tensor:
        return F.normalize(self.cloth_text_mlp(self.cloth_shared_mlp(x)), dim=-1)

    def _branches(self, feats: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """Identity and clothing branches of the [CLS] feature; returns the cloth-branch input too."""
        id_embeds = F.relu(self.id_projection(feats))  # (B, H)
        out = {"id_embeds": id_embeds}
        if self.id_classifier is not None:
            out["id_logits"] = self.id_classifier(id_embeds)  # (B, C)
        if self.id_word_head is not None:
            out["id_word_logits"] = self.id_word_head(id_embeds)  # (B, V)
        if self.id_adversary is not None:
            # The GRL hands id_projection -alpha x the adversary's gradient, and only id_projection: the
            # encoder's features are detached on this path, because the clothing branch needs clothing
            # in them; what must go is the identity branch's *selection* of it. (Reversed into the
            # encoder as well, the identity branch collapsed to constant features on the benchmark.)
            selected = F.relu(self.id_projection(feats.detach()))  # (B, H), id_embeds' values
            out["id_adv_embeds"] = F.normalize(self.id_adversary(grad_reverse(selected, self.grl_alpha)), dim=-1)
        if self.cloth_projection is None:
            return out, None
        # ReLU and the GRL commute (same mask, same sign flip), so grl(relu(p)) is the seed's relu(grl(p)).
        # model.cloth_encoder_grad: false -> the clothing terms do not train the image encoder
        cloth_embeds = F.relu(self.cloth_projection(feats if self.cloth_encoder_grad else feats.detach()))  # (B, H)
        out["cloth_embeds"] = cloth_embeds
        reversed_cloth = grad_reverse(cloth_embeds, self.grl_alpha)
        branch = reversed_cloth if self.grl_on_branch else cloth_embeds
        if self.cloth_classifier is not None:
            out["cloth_adv_logits"] = self.cloth_classifier(reversed_cloth)  # (B, C)
        if self.id_embed_projector is not None:
            out["decouple_id"] = self.id_embed_projector(id_embeds)  # (B, P)
            out["decouple_cloth"] = self.cloth_embed_projector(branch)  # (B, P)
        return out, branch

    def _encode_fields(self, batch: dict[str, Tensor], fields: list[str]) -> list[Tensor]:
        """Encode several text fields with ONE text-encoder call, padded to a common length; the
        clothing fields go through the clothing text head when it is separate."""
        ids = [batch[_TEXT_KEYS[f][0]] for f in fields]
        masks = [batch[_TEXT_KEYS[f][1]] for f in fields]
        length = max(t.shape[1] for t in ids)
        ids_all = torch.cat([F.pad(t, (0, length - t.shape[1]), value=self.pad_token_id) for t in ids])
        mask_all = torch.cat([F.pad(m, (0, length - m.shape[1]), value=0) for m in masks])
        sizes = [t.shape[0] for t in ids]
        if self.cloth_text_mlp is None:
            return list(self.encode_text(ids_all, mask_all).split(sizes))
        pooled = self._pooled_text(ids_all, mask_all).split(sizes)
        return [self._text_head(p) if f == "id" else self._cloth_text_head(p) for f, p in zip(fields, pooled)]

    def _fuse(self, image_embeds: Tensor, text_embeds: Tensor) -> tuple[Tensor, Tensor]:
        fused, gate = self.fusion(image_embeds, text_embeds)
        return self.scale() * F.normalize(fused, dim=-1), gate

    def _fusion_outputs(self, image_embeds: Tensor, text_embeds: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fusion-head logits of the B matched pairs and of 2B in-batch hard negatives: per image the
        closest identity text of another person, per text the closest image of another person, never
        a text identical to the row's own (:mod:`reid.mining`)."""
        B = image_embeds.shape[0]
        pids = batch[keys.PIDS]
        hashes = text_hashes(batch[keys.ID_INPUT_IDS], batch[keys.ID_ATTENTION_MASK])  # (B,)
        with torch.no_grad():  # mining only picks rows; no gradient flows through the choice
            sim = image_embeds @ text_embeds.T  # (B, B)
            hard_text, has_text = hardest_negatives(sim, pids, pids, hashes, hashes)
            hard_image, has_image = hardest_negatives(sim.T, pids, pids, hashes, hashes)
            neg_valid = torch.cat([has_text, has_image])  # (2B,)
        images = torch.cat([image_embeds, image_embeds, image_embeds[hard_image]])  # (3B, E)
        texts = torch.cat([text_embeds, text_embeds[hard_text], text_embeds])
        fused, gate = self._fuse(images, texts)
        logits = self.match_head(fused).squeeze(-1)  # (3B,)
        return {
            "fused_embeds": fused[:B],
            "gate_image_weight": gate[:B, 0],
            "fusion_pos_logits": logits[:B],
            "fusion_neg_logits": logits[B:],
            "fusion_neg_valid": neg_valid,
        }


def build_model(
    cfg: ModelConfig,
    dcfg: DisentangleConfig,
    *,
    num_classes: int,
    image_size: tuple[int, int],
    vocab_size: int | None = None,
    pad_token_id: int = 0,
    eos_token_id: int | None = None,
    text_max_length: int | None = None,
    encoder_configs: dict | None = None,
    sync_bn: bool = False,
) -> T2IReIDModel:
    """Build the encoders (local directory or preset) and the heads.

    ``encoder_configs`` (``{"image": ViTConfig, "text": BertConfig}``, or CLIP's tower configs)
    builds the encoders from those Hugging Face configs with random weights instead (an exported
    model, whose weights follow). ``pad_token_id`` / ``eos_token_id`` are the tokenizer's (a CLIP
    text tower needs its end-of-text id); ``text_max_length`` (``data.text_max_length``) is checked
    against the text encoder's position table.

    ``sync_bn``: BatchNorm becomes :class:`~reid.model.norm.SyncBatchNorm1d` (statistics over every
    process); pass True when training on more than one process, as the trainer does.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (training identities), got {num_classes}")
    if encoder_configs is not None:
        image_encoder, text_encoder = encoders_from_configs(encoder_configs["image"], encoder_configs["text"])
    else:
        image_encoder = build_image_encoder(cfg.image_encoder, image_size)
        text_encoder = build_text_encoder(cfg.text_encoder, vocab_size=vocab_size, pad_token_id=pad_token_id)
    text_name = describe(cfg.text_encoder, "model.text_encoder")
    h_img, h_txt = feature_width(image_encoder), feature_width(text_encoder)
    pad = _fit_text_encoder(text_encoder, cfg.text_pool, text_name, pad_token_id=pad_token_id,
                            eos_token_id=eos_token_id, text_max_length=text_max_length)
    model = T2IReIDModel(
        image_encoder,
        text_encoder,
        hidden_size=h_txt,
        image_width=h_img,  # id_projection / cloth_projection map it to h_txt when they differ
        cfg=cfg,
        heads=HeadSettings.of(dcfg),  # the one place the loss config reaches the model
        num_classes=num_classes,
        pad_token_id=pad,
    )
    model.grl_alpha = dcfg.alpha.at(0)  # the trainer moves it on each epoch
    if sync_bn:
        convert_sync_batchnorm(model)
    return model


def _fit_text_encoder(
    encoder: nn.Module, text_pool: str, name: str, *, pad_token_id: int, eos_token_id: int | None,
    text_max_length: int | None,
) -> int:
    """Check the text encoder against the text settings; returns the id to pad text fields with."""
    positions = encoder.config.max_position_embeddings
    if text_max_length is not None and text_max_length > positions:
        raise ConfigError(
            f"data.text_max_length: {text_max_length} tokens, but {name} reads at most "
            f"{positions} (its max_position_embeddings); set data.text_max_length <= {positions}"
        )
    if not is_clip(encoder):
        pad = encoder.config.pad_token_id  # BERT: the encoder's own pad id wins
        return pad_token_id if pad is None else pad
    if text_pool != "cls":
        raise ConfigError(
            f"model.text_pool: {text_pool!r} does not apply to a CLIP text encoder, which is pooled at "
            "its end-of-text token (its text_embeds); set model.text_pool=cls"
        )
    align_end_of_text(encoder, eos_token_id, name)
    # CLIP configs say pad_token_id 1 (a real token) while CLIP tokenizers pad with <|endoftext|>:
    # the tokenizer's id is the one the data pipeline pads with.
    return pad_token_id
