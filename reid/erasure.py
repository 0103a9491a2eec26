"""The clothing eraser: the clothing the captions name, erased from the identity embedding.

A pretrained image encoder sees clothes, and the identity embedding then reads them (on the
clothing-change benchmark a linear probe reads upper-garment colour from it at 30 %, chance 12,
whatever the clothing terms do: docs/ablation.md). The eraser removes, after training, the
directions of the identity embedding that co-vary with the clothing words of the train captions,
and only those:

1. Per train image: its identity embedding ``x`` (the model's ``image_embeds``), ``z`` = the share
   of its captions whose clothing part (:func:`reid.data.captions.split_caption`) uses each clothing
   word (words used by at least ``min_images`` images), ``t`` = the mean identity-text embedding of
   its captions' identity parts.
2. ``z`` minus its ridge regression on ``t``: what the identity description predicts about the
   clothes stays; only clothing the identity text does not imply is erased. Without this step the
   eraser takes gender out: the clothing sentences carry it ("her feet", "his jacket"; on real data
   garments go with gender too).
3. LEACE (Belrose et al., "LEACE: Perfect linear concept erasure in closed form", NeurIPS 2023) on
   ``(x, z_residual)``, truncated to the ``rank`` strongest directions: with ``W`` the whitening of
   ``x`` and ``U`` the top left singular vectors of ``W Cov(x, z)``,
   ``r(x) = x - W⁺ U Uᵀ W (x - mean)``. At full rank no linear predictor of ``z`` from ``r(x)``
   does better than a constant; truncated, the strongest of that co-variance goes.

Nothing of this needs labels: on CUHK-PEDES ``z`` and ``t`` come from the captions, as here. The
model applies the eraser only where the identity embedding is meant to hold no clothing — the
clothing-invariant mode and the identity half of the composed standard score — and returns it as
``invariant_image_embeds`` (re-normalised) beside the untouched ``image_embeds`` (which the
``full`` standard score, whole caption against image, keeps). Training never sees it: the trainer
refits it on the train split before every evaluation, so the selected and exported models carry
the eraser of their own weights; ``launch/erase_clothing.py`` fits one to an exported model.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

RIDGE = 1e-3  # of the clothing-on-identity-text regression, relative to the number of images
EIGEN_FLOOR = 1e-6  # whitening: eigenvalues below this share of the largest are raised to it


class ClothingEraser(nn.Module):
    """``r(x) = x - (x - mean) @ matrix.T`` on ``(N, E)`` rows; zeros (the identity map) until fitted.
    Both are persistent buffers, so a checkpoint or export carries the fitted eraser.

    They stay float32 when the model is cast to 16 bits (DeepSpeed's bf16 casts the whole module,
    buffers included), and the eraser computes in float32: a projection rounded to bf16 (~3
    significant digits) no longer takes out exactly the directions it was fit to remove.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("matrix", torch.zeros(dim, dim))

    def _apply(self, fn, recurse: bool = True):
        kept = {name: self._buffers[name] for name in ("mean", "matrix")}
        super()._apply(fn, recurse)
        for name, old in kept.items():  # moved with the model, never cast below float32
            new = self._buffers[name]
            if new.dtype != old.dtype and new.dtype.itemsize < 4:
                self._buffers[name] = old.to(device=new.device)
        return self

    def forward(self, x: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # float32 at least, float64 kept
        rows = x.to(dtype)
        return (rows - (rows - self.mean.to(dtype)) @ self.matrix.to(dtype).T).to(x.dtype)

    @torch.no_grad()
    def load_fit(self, mean: Tensor, matrix: Tensor) -> None:
        self.mean.copy_(mean)
        self.matrix.copy_(matrix)


def clothing_words(token_ids: Sequence[Sequence[int]], image_index: Sequence[int], num_images: int,
                   min_images: int, ignore: Sequence[int] = ()) -> tuple[Tensor, list[int]]:
    """``(num_images, K)`` float64: per image, the share of its captions whose clothing part
    (``token_ids[i]``, caption ``i`` of image ``image_index[i]``) uses each of the K words that at least
    ``min_images`` images use (``ignore``: special tokens); and those K token ids, ascending."""
    skip = set(ignore)
    per_caption = [(int(image), {int(t) for t in ids} - skip) for ids, image in zip(token_ids, image_index)]
    images_per_word = Counter(t for _, t in {(image, t) for image, words in per_caption for t in words})
    kept = sorted(t for t, n in images_per_word.items() if n >= min_images)
    column = {t: j for j, t in enumerate(kept)}
    z = torch.zeros(num_images, len(kept), dtype=torch.float64)
    for image, words in per_caption:
        for t in words:
            if t in column:
                z[image, column[t]] += 1.0
    captions = torch.bincount(torch.tensor([image for image, _ in per_caption], dtype=torch.long), minlength=num_images)
    return z / captions.clamp(min=1)[:, None], kept


def residual(z: Tensor, t: Tensor, ridge: float = RIDGE) -> Tensor:
    """``z`` (N, K) minus its ridge regression (with intercept) on ``t`` (N, D), float64."""
    z, t = z.double(), t.double()
    zc, tc = z - z.mean(0), t - t.mean(0)
    gram = tc.T @ tc + ridge * len(t) * torch.eye(t.shape[1], dtype=torch.float64)
    return zc - tc @ torch.linalg.solve(gram, tc.T @ zc)


def leace(x: Tensor, z: Tensor, rank: int, keep: Tensor | None = None, keep_rank: int = 0) -> tuple[Tensor, Tensor, int]:
    """The eraser of ``z`` (N, K) from ``x`` (N, D), truncated to ``rank`` directions: ``(mean (D,),
    matrix (D, D), rank used)`` for ``r(x) = x - (x - mean) @ matrix.T`` (float64). The rank used is
    at most the number of non-zero singular values of the whitened cross-covariance.

    ``keep`` (N, D'), ``keep_rank`` > 0: the ``keep_rank`` whitened directions of ``x`` that co-vary
    most with ``keep`` are left alone (the erased directions are chosen orthogonal to them), so the
    linear prediction of ``keep`` from those directions is the same before and after erasure."""
    x, z = x.double(), z.double()
    mean = x.mean(0)
    xc, zc = x - mean, z - z.mean(0)
    n = len(x)
    eigval, eigvec = torch.linalg.eigh(xc.T @ xc / n)
    eigval = eigval.clamp(min=float(eigval.max()) * EIGEN_FLOOR if float(eigval.max()) > 0 else 1.0)
    whiten = eigvec @ torch.diag(eigval.rsqrt()) @ eigvec.T
    unwhiten = eigvec @ torch.diag(eigval.sqrt()) @ eigvec.T
    cross = whiten @ (xc.T @ zc / n)  # (D, K): whitened Cov(x, z)
    if keep is not None and keep_rank > 0:
        kc = keep.double()
        kc = kc - kc.mean(0)
        q, _, _ = torch.linalg.svd(whiten @ (xc.T @ kc / n), full_matrices=False)
        q = q[:, :keep_rank]
        cross = cross - q @ (q.T @ cross)  # erase nothing along the kept directions
    u, s, _ = torch.linalg.svd(cross, full_matrices=False)
    used = min(int(rank), int((s > float(s.max()) * 1e-9).sum()) if len(s) and float(s.max()) > 0 else 0)
    u = u[:, :used]
    return mean, unwhiten @ u @ u.T @ whiten, used


@dataclass
class EraserFit:
    """What a fit read and did (printed by the trainer and launch/erase_clothing.py)."""

    rank: int  # directions erased
    num_images: int
    num_words: int
    seconds: float

    def describe(self) -> str:
        return (f"clothing eraser: {self.rank} directions fit on {self.num_images} train images, "
                f"{self.num_words} clothing words ({self.seconds:.0f} s)")


def _encode_train(model: nn.Module, data_cfg: Any, tokenizer: Any, accelerator: Any, root: Any, batch_size: int,
                  pixel_mean: Any, pixel_std: Any) -> tuple[dict[str, Tensor], dict[str, Tensor], list[str], list[str]]:
    """The train split's images (model outputs) and identity texts (embeddings), and their file paths."""
    from reid.disentangle_eval import train_image_loader, train_query_loader
    from reid.encoding import encode_gallery, encode_queries

    shard = dict(rank=accelerator.process_index, world_size=accelerator.num_processes)
    images, image_paths = train_image_loader(data_cfg, tokenizer, root, batch_size=batch_size, pixel_mean=pixel_mean,
                                             pixel_std=pixel_std, **shard)
    gallery, _ = encode_gallery(model, images, accelerator, len(image_paths))
    texts, text_paths = train_query_loader(data_cfg, tokenizer, root, batch_size=batch_size, **shard)
    queries, _ = encode_queries(model, texts, accelerator, len(text_paths), ("id",))
    return gallery, queries, image_paths, text_paths


@torch.no_grad()
def fit_clothing_eraser(model: nn.Module, eraser: ClothingEraser, data_cfg: Any, erase_cfg: Any, tokenizer: Any,
                        accelerator: Any, root: Any, *, batch_size: int, pixel_mean: Any = None,
                        pixel_std: Any = None) -> EraserFit:
    """Fit ``eraser`` (the unwrapped model's) on the train split (collective: every process encodes
    its shard, gathers all, and fits the same eraser). ``model`` is what encodes (the wrapped model
    in training, so that ZeRO-3 gathers its weights); ``erase_cfg`` is ``model.clothing_eraser``."""
    from reid.data.tables import build_tables

    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        # the loaders draw their seeds from torch's generator: fork it, so that fitting leaves the
        # training's random stream where it was
        with torch.random.fork_rng(devices=[]):
            gallery, queries, image_paths, text_paths = _encode_train(model, data_cfg, tokenizer, accelerator, root,
                                                                      batch_size, pixel_mean, pixel_std)
    finally:
        model.train(was_training)

    # at most max_images images (an even subsample, the same on every process) and their captions
    keep = torch.linspace(0, len(image_paths) - 1, min(len(image_paths), erase_cfg.max_images)).round().long().unique()
    row_of = {image_paths[i]: r for r, i in enumerate(keep.tolist())}
    table = build_tables(data_cfg, tokenizer, root).train  # one row per caption, the query loader's order
    captions = [i for i, p in enumerate(text_paths) if p in row_of]
    caption_image = [row_of[text_paths[i]] for i in captions]
    rows = table.select(captions)
    cloth_parts = [c if ok else "" for c, ok in zip(rows["cloth_caption"], rows["cloth_valid"])]
    cloth = tokenizer(cloth_parts, add_special_tokens=False)["input_ids"]
    z, words = clothing_words(cloth, caption_image, len(keep), erase_cfg.min_images, tokenizer.all_special_ids)
    t = torch.zeros(len(keep), queries["id"].shape[1], dtype=torch.float64)
    t.index_add_(0, torch.tensor(caption_image), queries["id"].double().cpu()[captions])
    t /= torch.bincount(torch.tensor(caption_image), minlength=len(keep)).clamp(min=1)[:, None]
    x = gallery["image_embeds"].double().cpu()[keep]
    if not words:
        mean, matrix, used = torch.zeros(x.shape[1]), torch.zeros(x.shape[1], x.shape[1]), 0
    else:
        mean, matrix, used = leace(x, residual(z, t) if erase_cfg.given_identity_text else z, erase_cfg.rank,
                                   keep=t, keep_rank=erase_cfg.protect)
    eraser.load_fit(mean.float(), matrix.float())
    return EraserFit(used, len(x), len(words), time.perf_counter() - start)
