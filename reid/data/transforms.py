"""Image decoding and augmentation with PIL + numpy (no torchvision), run in DataLoader workers.

Training (:class:`TrainTransform`), in IRRA's order: resize to ``data.image_size`` (H, W) with
bicubic interpolation → horizontal flip (p = ``augment.hflip``) → pad ``augment.pad`` black pixels
on every side and crop a random H×W window → scale to [0, 1] and normalise with the encoder's mean
/ std → random erasing (p = ``augment.erasing``) with torchvision's semantics: up to 10 tries at a
rectangle of area ∈ [0.02, 0.33] of the image and aspect ratio ∈ [0.3, 3.3] (log-uniform) that
fits, filled with 0 *after* normalisation. Evaluation (:class:`EvalTransform`) only resizes and
normalises.

All randomness comes from the ``numpy.random.Generator`` passed in (seeded per sample by the
sampler), never from global RNG state, so a sample's augmentation does not depend on the worker
that produced it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
DEFAULT_MEAN = (0.5, 0.5, 0.5)  # Hugging Face ViT's image processor
DEFAULT_STD = (0.5, 0.5, 0.5)


def pixel_stats(
    configured: tuple[Sequence[float] | None, Sequence[float] | None] = (None, None),
    recorded: tuple[Sequence[float] | None, Sequence[float] | None] = (None, None),
    encoder_path: str = "",
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image normalisation (mean, std): the one place its precedence is decided.

    1. ``configured``: ``data.pixel_mean`` / ``data.pixel_std`` (the config wins);
    2. ``recorded``: the statistics a run resolved and an export records (``reid_model.json``);
    3. the image encoder directory's ``preprocessor_config.json`` (``image_mean`` / ``image_std``);
    4. 0.5 / 0.5, Hugging Face ViT's.
    Mean and std are resolved each on its own (a config may set only one).
    """
    from_encoder: tuple = (None, None)
    pre = Path(encoder_path) / "preprocessor_config.json" if encoder_path else None
    if pre is not None and pre.is_file():
        data = json.loads(pre.read_text())
        from_encoder = (data.get("image_mean"), data.get("image_std"))
    out = []
    for k, default in enumerate((DEFAULT_MEAN, DEFAULT_STD)):
        value = configured[k] or recorded[k] or from_encoder[k] or default
        out.append(tuple(float(v) for v in value))
    return out[0], out[1]


def load_image(path: str | Path) -> Image.Image:
    """Decode an image fully as RGB; raises OSError (PIL's errors included) when unreadable."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc


class EvalTransform:
    """Resize (bicubic) to (H, W) and normalise: PIL RGB image -> (3, H, W) float32 tensor."""

    def __init__(self, image_size: Sequence[int], mean: Sequence[float], std: Sequence[float]):
        self.height, self.width = int(image_size[0]), int(image_size[1])
        # (x / 255 - mean) / std as one multiply-add per channel
        mean_, std_ = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std_)).astype(np.float32)
        self.shift = (-mean_ / std_).astype(np.float32)

    def resize(self, img: Image.Image) -> np.ndarray:
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)  # (H, W, 3)

    def normalize(self, array: np.ndarray) -> np.ndarray:
        # numpy, not torch: torch's intra-op threads contend with the loader's own processes and
        # made a 0-worker loader ~6x slower in bench/loader_throughput.py
        pixels = array.astype(np.float32) * self.scale + self.shift  # (H, W, 3)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (3, H, W)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(self.normalize(self.resize(img)))


class TrainTransform(EvalTransform):
    """Resize, flip, pad-and-crop, normalise, random erasing; randomness from ``rng`` only."""

    def __init__(
        self,
        image_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        hflip: float = 0.5,
        pad: int = 10,
        erasing: float = 0.5,
    ):
        super().__init__(image_size, mean, std)
        self.hflip, self.pad, self.erasing = hflip, pad, erasing

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        array = self.resize(img)  # (H, W, 3) uint8
        if rng.random() < self.hflip:
            array = array[:, ::-1]
        if self.pad > 0:
            array = pad_crop(array, self.pad, rng)
        pixels = self.normalize(array)  # (3, H, W)
        if rng.random() < self.erasing:
            random_erase(pixels, rng)
        return torch.from_numpy(pixels)


def pad_crop(array: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad ``pad`` pixels on each side, then crop a random window of the original size."""
    height, width = array.shape[:2]
    top = int(rng.integers(0, 2 * pad + 1))
    left = int(rng.integers(0, 2 * pad + 1))
    padded = np.pad(array, ((pad, pad), (pad, pad), (0, 0)))
    return padded[top : top + height, left : left + width]


def erase_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """(top, left, h, w) of a random-erasing rectangle, or None when 10 tries found none."""
    area = height * width
    log_lo, log_hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*ERASE_SCALE)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    return None


def random_erase(pixels: np.ndarray, rng: np.random.Generator) -> None:
    """Zero one random rectangle of a normalised (3, H, W) array in place."""
    box = erase_box(pixels.shape[1], pixels.shape[2], rng)
    if box is not None:
        top, left, h, w = box
        pixels[:, top : top + h, left : left + w] = 0.0
