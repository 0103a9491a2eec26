"""Batch keys, defined once: the data pipeline produces them, the model and the engine consume them.

A training batch (``collate_train``) is a dict of tensors, never strings:

=====================  ============  =============================================================
key                    shape, dtype  meaning
=====================  ============  =============================================================
``images``             (B,3,H,W) f32 augmented, normalised images
``pids``               (B,) int64    person id remapped to 0..N-1 (training identities)
``id_input_ids``       (B,Li) int64  identity text (``id_caption`` or the full caption), padded
``id_attention_mask``  (B,Li) int64  1 = token, 0 = padding
``cloth_input_ids``    (B,Lc) int64  this image's own clothing text (the ``is_matched=1`` pair)
``cloth_attention_mask``
``neg_cloth_input_ids``(B,Ln) int64  a clothing text of another identity (the ``is_matched=0`` pair)
``neg_cloth_attention_mask``
``cloth_valid``        (B,) bool     False when the caption had no clothing part (cloth terms skip it)
``index``              (B,) int64    row index in the training table (debugging, resume checks)
``bad_images``         () int64      images in this batch that failed to decode and were replaced
                                     (the engine pops it before ``forward`` and enforces the limit)
=====================  ============  =============================================================

Padding is dynamic: each pair of ``*_input_ids`` / ``*_attention_mask`` is padded to the longest
sequence of that field in the batch (at most ``data.text_max_length``).

Evaluation batches: gallery ``{images, pids, index}``; queries ``{input_ids, attention_mask, pids,
index}``.
"""

IMAGES = "images"
PIDS = "pids"
INDEX = "index"
ID_INPUT_IDS = "id_input_ids"
ID_ATTENTION_MASK = "id_attention_mask"
CLOTH_INPUT_IDS = "cloth_input_ids"
CLOTH_ATTENTION_MASK = "cloth_attention_mask"
NEG_CLOTH_INPUT_IDS = "neg_cloth_input_ids"
NEG_CLOTH_ATTENTION_MASK = "neg_cloth_attention_mask"
CLOTH_VALID = "cloth_valid"
BAD_IMAGES = "bad_images"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"

TEXT_FIELDS = ("id", "cloth", "neg_cloth")  # prefixes of the three padded text fields
