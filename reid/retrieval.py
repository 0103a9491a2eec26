"""The two retrieval modes: what a query is compared with, and how.

* ``standard`` — the whole description against the image (the IRRA protocol's question: "find this
  person as described"). Its score is one of two forms (``eval.standard``):

  - ``composed`` (our default for models with a clothing branch): the caption is split into its
    identity and clothing parts (:func:`reid.data.captions.split_caption`) and
    score = <text(id part), image identity embedding> + <text(clothing part), image clothing embedding>,
    each term matching what the model was trained to match (``info_nce``/``bio`` and ``cloth``). A
    caption without a clothing part scores with its identity part alone.
  - ``full`` (the seed's, and IRRA's): <text(whole caption), image identity embedding>.

* ``clothing_invariant`` — the identity part of the query against the image's identity embedding:
  what the person looks like, whatever they wear. This is the mode the clothing-change protocol is
  about.

A model with a clothing eraser (``model.clothing_eraser``, :mod:`reid.erasure`) adds
``invariant_image_embeds``: its identity embedding with the clothing the train captions name
erased. The clothing-invariant mode and the identity half of ``composed`` use it; ``full`` (the
whole caption, clothing words included) keeps ``image_embeds``.

Both are dot products of L2-normalised rows, so every metric in :mod:`reid.evaluation` applies:
``composed`` concatenates [id; cloth] on both sides, which sums the two cosines.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

MODES = {"standard": "standard", "clothing_invariant": "clothing-invariant"}
StandardForm = Literal["composed", "full"]


def standard_form(requested: StandardForm, gallery: dict[str, Tensor]) -> StandardForm:
    """``composed`` needs the image clothing embedding (a model trained with the ``cloth`` or
    ``cloth_match`` term); without it the standard mode is ``full``."""
    return "composed" if requested == "composed" and "cloth_image_embeds" in gallery else "full"


def identity_rows(gallery: dict[str, Tensor]) -> Tensor:
    """The gallery's identity embedding for identity-part queries: through the clothing eraser
    where the model has one (``invariant_image_embeds``), else ``image_embeds``."""
    return gallery.get("invariant_image_embeds", gallery["image_embeds"])


def mode_embeddings(
    mode: str, queries: dict[str, Tensor], gallery: dict[str, Tensor], form: StandardForm = "composed"
) -> tuple[Tensor, Tensor]:
    """(query rows, gallery rows) whose dot products are the mode's scores.

    ``queries``: ``{"full", "id", "cloth"}`` text embeddings (Q, E) (``cloth`` zero where the caption
    has no clothing part); ``gallery``: see :func:`gallery_rows`.
    """
    rows = gallery_rows(gallery, mode, form)  # (an unknown mode raises here)
    if mode == "clothing_invariant":
        return queries["id"], rows
    if standard_form(form, gallery) == "full":
        return queries["full"], rows
    return torch.cat([queries["id"], queries["cloth"]], dim=1), rows


def gallery_rows(gallery: dict[str, Tensor], mode: str, form: StandardForm = "composed") -> Tensor:
    """The gallery rows a query of ``mode`` is scored against. ``gallery``: ``image_embeds`` (G, E),
    ``invariant_image_embeds`` (G, E) where the model has a clothing eraser, and for ``composed``
    ``cloth_image_embeds`` (G, E)."""
    if mode == "clothing_invariant":
        return identity_rows(gallery)
    if mode != "standard":
        raise ValueError(f"unknown retrieval mode {mode!r} (modes: {', '.join(MODES)})")
    if standard_form(form, gallery) == "full":
        return gallery["image_embeds"]
    return torch.cat([identity_rows(gallery), gallery["cloth_image_embeds"]], dim=1)


def query_fields(mode: str, form: StandardForm) -> tuple[str, ...]:
    """The text fields a mode reads (to encode no more than needed)."""
    if mode == "clothing_invariant":
        return ("id",)
    return ("id", "cloth") if form == "composed" else ("full",)
