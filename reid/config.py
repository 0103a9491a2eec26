"""Typed configuration: nested dataclasses, loaded from YAML, overridden with dotted keys.

    cfg = load_config("configs/synthetic.yaml", ["optim.lr=3e-4", "model.fusion.num_heads=8"])

Precedence: command-line overrides > YAML > the defaults below. An unknown key anywhere (YAML or
override), a value of the wrong type or an impossible value raises :class:`ConfigError` naming the
dotted path, e.g. ``model.fusion.num_head: unknown key (did you mean 'num_heads'?)``.

Builders receive their own section (``build_model(cfg.model, ...)``); derived values (the number of
training identities, the encoder's pixel statistics) are passed as arguments, never written back.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from reid.errors import ConfigError

# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


@dataclass
class SynthConfig:
    """The embedded default: a synthetic dataset in CUHK-PEDES format, generated on first use."""

    num_ids: int = 120  # identities, split about 70/15/15 into train/val/test
    seed: int = 0  # the generator's seed (same seed, same bytes)
    image_size: tuple[int, int] = (128, 64)  # (H, W) of the rendered images

    def validate(self, path: str) -> None:
        _check(self.num_ids >= 10, f"{path}.num_ids", "must be >= 10 (train/val/test need identities)")
        _check(min(self.image_size) >= 32, f"{path}.image_size", "both sides must be >= 32 pixels")


@dataclass
class AugmentConfig:
    """Training-time image augmentation (evaluation only resizes and normalises)."""

    hflip: float = 0.5  # probability of a horizontal flip
    pad: int = 10  # pad-and-random-crop border in pixels; 0 switches it off
    erasing: float = 0.5  # random-erasing probability

    def validate(self, path: str) -> None:
        _check(0.0 <= self.hflip <= 1.0, f"{path}.hflip", "must be a probability in [0, 1]")
        _check(0.0 <= self.erasing <= 1.0, f"{path}.erasing", "must be a probability in [0, 1]")
        _check(self.pad >= 0, f"{path}.pad", "must be >= 0")


@dataclass
class DataConfig:
    dataset: Literal["cuhk_pedes", "icfg_pedes", "rstpreid"] = "cuhk_pedes"  # annotation format
    root: str = ""  # dataset directory; "" = the synthetic dataset, generated into cache_dir
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    cache_dir: str = ""  # arrow / tokenizer / synthetic cache; "" = $REID_CACHE or ~/.cache/reid
    image_size: tuple[int, int] = (224, 224)  # (H, W) fed to the image encoder
    # None = the image encoder's statistics (image_mean / image_std of its directory's
    # preprocessor_config.json, e.g. CLIP's), else 0.5
    pixel_mean: Optional[tuple[float, float, float]] = None
    pixel_std: Optional[tuple[float, float, float]] = None  # None = the encoder's statistics, as pixel_mean
    text_max_length: int = 100  # tokens per text at most (batches pad to their longest); CLIP reads <= 77
    tokenizer: str = ""  # "" = the text encoder's directory, or a vocabulary built for the data
    id_text: Literal["id", "full"] = "id"  # which text trains the identity branch
    # Probability that each segment of the identity text is left out of a training sample (one
    # always stays): partial descriptions make every identity fact count; 0 = off (the seed)
    id_segment_drop: float = 0.0
    negatives: Literal["random", "hard"] = "random"  # how the is_matched=0 cloth caption is drawn
    hard_topk: int = 5  # "hard": draw among the k most similar cloth captions of other ids
    # "hard": how the most similar captions are found: "exact" compares every pair (quadratic:
    # seconds at 20k unique clothing texts, hours at 1M), "approximate" an inverted-file index
    # (linear; BENCHMARKS.md measures its agreement with exact), "auto" exact up to 20k texts
    hard_search: Literal["auto", "exact", "approximate"] = "auto"
    # identity = P x K batches; similar = P x K batches of people with similar identity descriptions
    sampler: Literal["random", "identity", "similar"] = "identity"
    num_instances: int = 4  # K of P x K
    similar_group: int = 4  # sampler=similar: identities per group of similar people in a batch
    batch_size: int = 64  # per process
    num_workers: int = 2  # DataLoader worker processes (decode + augment)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_bad_images: int = 50  # unreadable images skipped during training before it stops

    def validate(self, path: str) -> None:
        _check(min(self.image_size) >= 16, f"{path}.image_size", "both sides must be >= 16 pixels")
        _check(self.text_max_length >= 8, f"{path}.text_max_length", "must be >= 8 tokens")
        _check(self.batch_size >= 2, f"{path}.batch_size", "must be >= 2 (contrastive terms need negatives)")
        _check(self.num_workers >= 0, f"{path}.num_workers", "must be >= 0")
        _check(self.hard_topk >= 1, f"{path}.hard_topk", "must be >= 1")
        _check(self.max_bad_images >= 0, f"{path}.max_bad_images", "must be >= 0")
        _check(self.num_instances >= 1, f"{path}.num_instances", "must be >= 1")
        _check(self.similar_group >= 1, f"{path}.similar_group", "must be >= 1")
        _check(0.0 <= self.id_segment_drop < 1.0, f"{path}.id_segment_drop", "must be in [0, 1)")
        if self.sampler != "random":
            _check(
                self.batch_size % self.num_instances == 0,
                f"{path}.batch_size",
                f"must be a multiple of data.num_instances ({self.num_instances}) for P x K batches",
            )
        for name in ("pixel_mean", "pixel_std"):
            value = getattr(self, name)
            if value is not None and name == "pixel_std":
                _check(min(value) > 0, f"{path}.{name}", "must be > 0")


@dataclass
class EncoderConfig:
    """A Hugging Face encoder: loaded from a local directory, or built from a preset (random init)."""

    # Local directory with config.json + weights; "" = build `preset` from scratch. Its config.json
    # model_type picks the encoder: vit (images) / bert (text), or CLIP: clip (a whole CLIP
    # directory, as downloaded: this encoder's tower is read from it), clip_vision_model,
    # clip_text_model; or a CNN for images: resnet, convnext (its pooled last stage; any width: the
    # branch projections take it to the text encoder's). Every tensor must fit, or loading stops
    # naming the ones that do not.
    path: str = ""
    preset: Literal["tiny", "small", "base"] = "tiny"  # sizes when path is "": tiny (64-d, 2 layers), small (ViT-S), base (ViT-B / BERT-base)
    # ViT patch side of a preset image encoder; 0 = 16 (a loaded ViT keeps its own: setting it is an error)
    patch_size: int = 0
    layers: int = 0  # transformer layers of a preset encoder; 0 = the preset's (a loaded one keeps its own)
    # hidden size of a preset encoder; 0 = the preset's. A multiple of the preset's attention heads
    # (tiny 4, small 6, base 12); the MLP keeps the preset's ratio (tiny 2x, small and base 4x)
    hidden: int = 0
    gradient_checkpointing: bool = False  # recompute activations in backward (memory for time)
    # Keep the loaded weights as they are: no gradient, no optimizer state, always in eval mode
    # (dropout off, BatchNorm statistics kept), run under no_grad; only the heads train (LiT's locked
    # image tower). Only for a loaded encoder (`path`): a preset one is random
    frozen: bool = False

    def validate(self, path: str) -> None:
        for name, what in (("patch_size", "0 = 16"), ("layers", "0 = the preset's"), ("hidden", "0 = the preset's")):
            _check(getattr(self, name) >= 0, f"{path}.{name}", f"must be >= 0 ({what})")
            _check(not (self.path and getattr(self, name)), f"{path}.{name}",
                   f"only for a preset encoder: a loaded one keeps the {name} of its weights (set it to 0)")
        _check(not self.frozen or bool(self.path), f"{path}.frozen",
               f"only for a loaded encoder: a preset one has random weights (set {path}.path, or frozen: false)")
        _check(not (self.frozen and self.gradient_checkpointing), f"{path}.gradient_checkpointing",
               "a frozen encoder keeps no activations for backward: nothing to checkpoint (set it to false)")


@dataclass
class FusionConfig:
    type: str = "attention_gated"  # "attention_gated" (the seed's module) or "none"
    dim: int = 256  # input size: the 256-d image and text embeddings
    num_heads: int = 4  # cross-attention heads
    output_dim: int = 256  # fused embedding size
    dropout: float = 0.1  # in attention, gate and output

    def validate(self, path: str) -> None:
        _check(self.dim > 0 and self.output_dim > 0, f"{path}.dim", "dimensions must be > 0")
        _check(self.num_heads > 0, f"{path}.num_heads", "must be > 0")
        if self.num_heads > 0:
            _check(self.dim % self.num_heads == 0, f"{path}.num_heads", f"must divide dim ({self.dim})")
        _check(0.0 <= self.dropout < 1.0, f"{path}.dropout", "must be in [0, 1)")


@dataclass
class EraserConfig:
    """The clothing eraser (reid/erasure.py): after training, the directions of the identity
    embedding that co-vary with the captions' clothing words (beyond what the identity text implies)
    are erased for the clothing-invariant mode and the composed standard score; refit on the train
    split before every evaluation. Not in the seed."""

    rank: int = 0  # directions erased; 0 = no eraser. docs/ablation.md measures 16
    min_images: int = 20  # a clothing word enters the fit when at least this many train images' captions use it
    max_images: int = 20000  # train images the fit reads at most (an even subsample beyond)
    # Erase only the clothing the identity text does not imply (the clothing words minus their
    # regression on the identity-text embedding). false: the clothing words as they are, which takes
    # out identity facts the clothing sentences carry too ("her coat": gender; docs/ablation.md)
    given_identity_text: bool = True
    # Directions of the identity embedding left untouched: the `protect` that co-vary most with the
    # identity text (whitened), so what they predict of it is exactly kept; 0 = none
    protect: int = 0

    def validate(self, path: str) -> None:
        _check(self.rank >= 0, f"{path}.rank", "must be >= 0 (0 = no eraser)")
        _check(self.protect >= 0, f"{path}.protect", "must be >= 0 (0 = none)")
        _check(self.min_images >= 1, f"{path}.min_images", "must be >= 1")
        _check(self.max_images >= 2, f"{path}.max_images", "must be >= 2")


@dataclass
class ModelConfig:
    image_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text_encoder: EncoderConfig = field(default_factory=EncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    shared_dim: int = 512  # shared_mlp: hidden -> shared_dim
    embed_dim: int = 256  # image_mlp / text_mlp output, the retrieval embedding
    mlp_dropout: float = 0.2  # the seed's Dropout(0.2) in image_mlp / text_mlp
    # Text feature: BERT's [CLS] (the seed) or the mean over tokens (the two measure alike on the
    # tiny default since presets have no dropout: docs/model.md). A CLIP text encoder is always
    # pooled at its end-of-text token (its text_embeds): "mean" is an error there.
    text_pool: Literal["cls", "mean"] = "cls"
    # Heads of the clothing branch and the clothing text. "shared" (the seed): the same shared_mlp,
    # image_mlp and text_mlp as identity, one 256-d space for both. "separate": their own copies
    # (cloth_shared_mlp, cloth_image_mlp, cloth_text_mlp), so training the clothing match cannot
    # teach the identity heads to express clothing (docs/ablation.md measures both).
    cloth_heads: Literal["shared", "separate"] = "shared"
    # Whether the clothing terms train the image encoder. true (the seed): the clothing branch reads
    # the encoder's [CLS] feature with its gradient, so the clothing terms shape the feature the
    # identity branch reads too. false: the branch reads it detached; the clothing terms train
    # their own heads (and the text encoder) only, and the image encoder learns from the identity
    # terms and `decouple` (docs/ablation.md measures both from an encoder that already sees clothes).
    cloth_encoder_grad: bool = True
    clothing_eraser: EraserConfig = field(default_factory=EraserConfig)

    def validate(self, path: str) -> None:
        _check(self.shared_dim > 0, f"{path}.shared_dim", "must be > 0")
        _check(self.embed_dim > 0, f"{path}.embed_dim", "must be > 0")
        _check(self.clothing_eraser.rank <= self.embed_dim, f"{path}.clothing_eraser.rank",
               f"must be <= model.embed_dim ({self.embed_dim}): it erases directions of the identity embedding")
        _check(0.0 <= self.mlp_dropout < 1.0, f"{path}.mlp_dropout", "must be in [0, 1)")
        _check(self.text_encoder.patch_size == 0, f"{path}.text_encoder.patch_size", "only image encoders have patches")
        if self.fusion.type != "none":
            _check(
                self.fusion.dim == self.embed_dim,
                f"{path}.fusion.dim",
                f"must equal model.embed_dim ({self.embed_dim}): fusion takes the 256-d embeddings",
            )


@dataclass
class LossWeights:
    """Weight of each term in the total; 0 skips the term's computation entirely."""

    info_nce: float = 1.0  # image identity embedding <-> identity text, symmetric InfoNCE
    cls: float = 1.0  # identity cross-entropy on id_logits
    bio: float = 1.0  # identity-level alignment (IRRA's SDM): same-id pairs are positives
    cloth: float = 0.5  # cloth image embedding <-> own cloth text, InfoNCE over matched pairs
    cloth_adv: float = 0.1  # identity classifier on cloth features behind the GRL
    cloth_match: float = 0.5  # the seed's value
    decouple: float = 0.3  # the seed's value
    fusion_match: float = 0.0  # not in the seed: trains the fusion module as a pair-matching head
    # not in the seed: an adversary behind the GRL matches identity features to clothing texts, so
    # the identity branch is pushed to carry no clothing (the mirror of cloth_adv)
    id_adv: float = 0.0
    # not in the seed: the identity features predict which words of the global batch's identity
    # texts their own identity text uses (multi-label, words from the captions: real data has them)
    id_words: float = 0.0

    def validate(self, path: str) -> None:
        for f in dataclasses.fields(self):
            _check(getattr(self, f.name) >= 0.0, f"{path}.{f.name}", "must be >= 0")
        enabled = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) > 0]
        _check(bool(enabled), path, "at least one weight must be > 0")


@dataclass
class AlphaSchedule:
    """GRL strength: alpha = min(max, start + step * n) (the seed: 0.1, 0.02, 1.0), n counted as
    ``per`` says. The trainer sets it on the model at the start of each epoch, like the learning rate.

    ``per: seed_epoch`` (default) counts what the seed counts: the seed's epoch holds every row twice
    (it appends a separate is_matched = 0 row per item; ours folds that negative into the row), so
    one seed epoch is two of ours and n = epoch // 2: alpha rises at the same rate per sample seen
    as in the seed. ``per: epoch`` steps every one of our epochs (twice as fast per sample).
    """

    start: float = 0.1  # alpha at epoch 0
    step: float = 0.02  # added per counted epoch
    max: float = 1.0  # ceiling
    per: Literal["seed_epoch", "epoch"] = "seed_epoch"

    def validate(self, path: str) -> None:
        _check(self.start >= 0 and self.step >= 0 and self.max >= 0, path, "start/step/max must be >= 0")

    def at(self, epoch: int) -> float:
        """alpha during our epoch ``epoch`` (0-based)."""
        n = epoch // 2 if self.per == "seed_epoch" else epoch
        return min(self.max, self.start + self.step * n)


@dataclass
class ClothMatchConfig:
    form: Literal["pair", "seed"] = "pair"  # pair = logistic on labelled pairs; seed = InfoNCE


@dataclass
class InfoNceConfig:
    # A batch's other rows of the same person: "negative" (the seed's diagonal InfoNCE) or "exclude"
    # (left out of the softmax: with P x K batches they describe the same person)
    same_person: Literal["negative", "exclude"] = "negative"
    # Also contrast each image with a memory of every training identity's text (a running mean per
    # identity, reid/losses/memory.py): among hundreds of people every identity fact counts
    memory: bool = False
    memory_momentum: float = 0.5  # weight of a memory row's old value at each update

    def validate(self, path: str) -> None:
        _check(0.0 <= self.memory_momentum < 1.0, f"{path}.memory_momentum", "must be in [0, 1)")


@dataclass
class DecoupleConfig:
    form: Literal["xcorr", "seed"] = "xcorr"  # xcorr = batch cross-correlation; seed = projector |cos|
    projector_dim: int = 256  # seed form: id/cloth_embed_projector output size


LEARNABLE_TEMPERATURE_RANGE = (0.01, 1.0)  # a learnable temperature is clamped here (CLIP: 1/100)


@dataclass
class DisentangleConfig:
    """The seed's `disentangle` section: GRL placement and schedule, and the seven loss terms."""

    grl: Literal["cloth_branch", "adversary"] = "cloth_branch"  # the seed: cloth_branch
    alpha: AlphaSchedule = field(default_factory=AlphaSchedule)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    temperature: float = 0.1  # the seed's InfoNCE temperature
    learnable_temperature: bool = False  # learn tau (a log-parameter clamped to [0.01, 1])
    label_smoothing: float = 0.0  # for `cls`
    info_nce: InfoNceConfig = field(default_factory=InfoNceConfig)
    cloth_match: ClothMatchConfig = field(default_factory=ClothMatchConfig)
    decouple: DecoupleConfig = field(default_factory=DecoupleConfig)

    def validate(self, path: str) -> None:
        _check(self.temperature > 0, f"{path}.temperature", "must be > 0")
        lo, hi = LEARNABLE_TEMPERATURE_RANGE
        if self.learnable_temperature:
            _check(lo <= self.temperature <= hi, f"{path}.temperature", f"must be in [{lo}, {hi}] when learnable")
        _check(0.0 <= self.label_smoothing < 1.0, f"{path}.label_smoothing", "must be in [0, 1)")
        _check(self.decouple.projector_dim > 0, f"{path}.decouple.projector_dim", "must be > 0")


@dataclass
class OptimConfig:
    """AdamW with parameter groups: pretrained encoders at `lr`, new heads at `head_lr`; the image
    encoder at its own `image_lr` when that is set (a pretrained image encoder beside a text encoder
    trained from scratch)."""

    lr: float = 1e-5  # pretrained encoders
    head_lr: float = 1e-4  # new heads, MLPs, fusion, classifiers
    image_lr: float = 0.0  # the image encoder alone, in a group of its own; 0 = `lr`
    weight_decay: float = 0.01  # never applied to norms, biases and temperatures
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    eps: float = 1e-8  # AdamW
    warmup_steps: int = 0  # optimizer steps of linear warm-up
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of each group's lr

    def validate(self, path: str) -> None:
        _check(self.lr > 0, f"{path}.lr", "must be > 0")
        _check(self.head_lr > 0, f"{path}.head_lr", "must be > 0")
        _check(self.image_lr >= 0, f"{path}.image_lr", "must be >= 0 (0 = optim.lr)")
        _check(self.weight_decay >= 0, f"{path}.weight_decay", "must be >= 0")
        _check(all(0.0 <= b < 1.0 for b in self.betas), f"{path}.betas", "must be in [0, 1)")
        _check(self.warmup_steps >= 0, f"{path}.warmup_steps", "must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, f"{path}.min_lr_ratio", "must be in [0, 1]")


@dataclass
class TrainConfig:
    epochs: int = 60  # passes over the training rows (the lr schedule spans them)
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    grad_accum: int = 1  # micro-batches per optimizer step (the one place it is set)
    max_grad_norm: float = 5.0  # clipping (the one place it is set); 0 = off
    seed: int = 42  # initial weights, data order, augmentation and negatives
    output_dir: str = "runs"  # runs are written to <output_dir>/<run_name>
    run_name: str = ""  # "" = <config name>-<timestamp>
    log_every: int = 10  # optimizer steps between TensorBoard points
    save_every: int = 0  # optimizer steps between checkpoints (0 = at epoch ends only)
    keep_last: int = 2  # checkpoints kept
    eval_every: int = 1  # epochs between val evaluations (0 = only at the end)
    max_bad_steps: int = 5  # consecutive non-finite losses (skipped) before the run stops
    compile: bool = False  # torch.compile the encoders
    max_shard_size: str = "2GB"  # safetensors shard size of the exported model
    progress: bool = True  # progress bar on the main process
    # Intra-op threads of each process in a CPU run (GPU runs keep torch's own). 1, as `accelerate
    # launch` sets it (OMP_NUM_THREADS=1): safe beside other jobs. 0 = the cores this process may
    # use, shared among the processes on its node: faster alone (1.06 -> 1.30 steps/s on 2 cores),
    # ~10x slower on cores other jobs keep busy. The thread count changes the last bits of the sums.
    cpu_threads: int = 1

    def validate(self, path: str) -> None:
        _check(self.epochs >= 1, f"{path}.epochs", "must be >= 1")
        _check(self.max_steps >= 0, f"{path}.max_steps", "must be >= 0")
        _check(self.grad_accum >= 1, f"{path}.grad_accum", "must be >= 1")
        _check(self.max_grad_norm >= 0, f"{path}.max_grad_norm", "must be >= 0")
        _check(self.log_every >= 1, f"{path}.log_every", "must be >= 1")
        _check(self.save_every >= 0, f"{path}.save_every", "must be >= 0")
        _check(self.keep_last >= 1, f"{path}.keep_last", "must be >= 1")
        _check(self.eval_every >= 0, f"{path}.eval_every", "must be >= 0")
        _check(self.max_bad_steps >= 1, f"{path}.max_bad_steps", "must be >= 1")
        _check(self.cpu_threads >= 0, f"{path}.cpu_threads", "must be >= 0 (0 = the usable cores / processes on the node)")


@dataclass
class EvalConfig:
    split: Literal["val", "test"] = "val"  # model selection uses val, never test
    batch_size: int = 128  # per process, for encoding gallery and queries
    # The standard mode's score: "composed" = <id part, image id embedding> + <clothing part, image
    # clothing embedding> (needs the cloth branch); "full" = <whole caption, image id embedding> (the seed's)
    standard: Literal["composed", "full"] = "composed"
    # The val figure that picks the best checkpoint: <protocol>/<mode>/<metric>, protocol standard or
    # clothing_change (synthetic data only), mode standard or clothing_invariant, metric R1 R5 R10 mAP mINP
    select: str = "standard/standard/R1"
    chunk_size: int = 1024  # queries per similarity chunk (memory bound for large galleries)

    def validate(self, path: str) -> None:
        _check(self.batch_size >= 1, f"{path}.batch_size", "must be >= 1")
        _check(self.chunk_size >= 1, f"{path}.chunk_size", "must be >= 1")
        protocol, mode, metric = (self.select.split("/") + ["", "", ""])[:3]
        _check(self.select.count("/") == 2 and protocol in ("standard", "clothing_change")
               and mode in ("standard", "clothing_invariant")
               and metric in ("R1", "R5", "R10", "mAP", "mINP"), f"{path}.select",
               f"{self.select!r} is not <protocol>/<mode>/<metric> (e.g. standard/standard/R1 or "
               "clothing_change/clothing_invariant/R1)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    disentangle: DisentangleConfig = field(default_factory=DisentangleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, path: str) -> None:
        """Checks that span sections (each section checks its own fields first)."""
        if self.disentangle.loss_weights.fusion_match > 0:
            _check(self.model.fusion.type != "none", "disentangle.loss_weights.fusion_match",
                   "> 0 needs a fusion module, but model.fusion.type is 'none'")
        from reid.data.formats import FORMATS  # the splits each dataset has

        splits = FORMATS[self.data.dataset].splits if self.data.dataset in FORMATS else ()
        _check(not splits or self.eval.split in splits, "eval.split",
               f"{self.eval.split!r}: data.dataset {self.data.dataset!r} has no such split "
               f"(it has {', '.join(splits)}); set eval.split=test")

    def warnings(self) -> list[str]:
        """Cross-section findings that do not stop a run (the entry point prints them)."""
        out = []
        if self.eval.split == "test":
            out.append("eval.split=test: the best checkpoint is picked on the test split, which inflates "
                       "its test figures (a dataset without a val split, such as ICFG-PEDES, leaves no other choice)")
        return out


# --------------------------------------------------------------------------------------------------
# Loading, overriding, validating, saving
# --------------------------------------------------------------------------------------------------


def _check(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{path}: {message}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``key.sub=value`` overrides."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        raw = _drop_retired(loaded, source)
    from_dict(Config, raw, source=source)  # report a bad YAML key against the YAML file
    cli: dict[str, Any] = {}
    for item in overrides:
        _apply_override(cli, item)
    cli = _drop_retired(cli, "command-line override")
    from_dict(Config, cli, source="command-line override")
    cfg = from_dict(Config, _merge(raw, cli), source=source)
    validate(cfg)
    return cfg


# Keys an older reid wrote (saved run configs, exported models): dropped with one warning line.
RETIRED_KEYS = {
    ("eval", "query"): "both retrieval modes are evaluated now; eval.select picks the checkpoint",
    ("eval", "rerank_topk"): "fusion re-ranking was removed: re-ranking the top 10 with the fusion head "
                             "lowered R1 (32.8 -> 15.0 over 3 seeds, docs/ablation.md)",
}


def _drop_retired(raw: dict[str, Any], source: str) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for (section, key), why in RETIRED_KEYS.items():
        if isinstance(out.get(section), dict) and key in out[section]:
            del out[section][key]
            print(f"warning: {section}.{key} is no longer a setting and is ignored ({why}) ({source})", file=sys.stderr)
    return out


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip().lstrip("-")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, raw: Any, source: str = "config", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys by dotted path."""
    where = prefix or "<top level>"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(raw).__name__} ({source})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"{dotted}: unknown key{hint} ({source})")
        kwargs[key] = _coerce(hints[key], value, dotted, source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path, source)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{path}: {value!r} is not one of {choices} ({source})")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r} ({source})")
        return tuple(_coerce(a, v, f"{path}[{i}]", source) for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({source})")
        return [_coerce(args[0], v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {value!r} ({source})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r} ({source})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {value!r} ({source})")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r} ({source})")
    raise ConfigError(f"{path}: unsupported config type {tp!r}")  # pragma: no cover - schema bug


def validate(obj: Any, prefix: str = "") -> None:
    """Run every section's ``validate(path)`` (children first, then cross-field checks)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, f"{prefix}.{f.name}" if prefix else f.name)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(prefix or "config")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML and trackers."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: str | Path, header: str = "") -> None:
    """Write the resolved config as YAML (the run directory keeps one beside its checkpoints);
    ``header`` lines go on top as comments."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    Path(path).write_text(comments + yaml.safe_dump(to_dict(cfg), sort_keys=False))
