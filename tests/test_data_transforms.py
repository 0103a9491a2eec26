"""Image transforms against hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reid.data.transforms import EvalTransform, TrainTransform, erase_box, load_image

HALF = (0.5, 0.5, 0.5)


def _ramp(height: int = 8, width: int = 6) -> Image.Image:
    """Pixel (y, x) = (10 * x, 20 * y, 7): every column and row distinct."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[..., 0] = 10 * np.arange(width)[None, :]
    array[..., 1] = 20 * np.arange(height)[:, None]
    array[..., 2] = 7
    return Image.fromarray(array)


def _expected(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array.astype(np.float32) / 255.0 * 2.0 - 1.0).permute(2, 0, 1)


def test_normalised_values_of_a_solid_image():
    img = Image.new("RGB", (4, 4), (255, 0, 51))
    out = EvalTransform((4, 4), mean=(0.5, 0.25, 0.2), std=(0.5, 0.25, 0.1))(img)
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.ones(4, 4))  # (1 - 0.5) / 0.5
    assert torch.allclose(out[1], torch.full((4, 4), -1.0))  # (0 - 0.25) / 0.25
    assert torch.allclose(out[2], torch.zeros(4, 4), atol=1e-6)  # (0.2 - 0.2) / 0.1


def test_resize_is_bicubic_to_height_width():
    img = _ramp(16, 12)
    out = EvalTransform((8, 4), HALF, HALF)(img)
    assert out.shape == (3, 8, 4)
    reference = np.asarray(img.resize((4, 8), Image.BICUBIC))
    assert torch.allclose(out, _expected(reference))


def test_flip_only():
    img = _ramp()
    out = TrainTransform((8, 6), HALF, HALF, hflip=1.0, pad=0, erasing=0.0)(img, np.random.default_rng(0))
    assert torch.allclose(out, _expected(np.asarray(img)[:, ::-1]))
    same = TrainTransform((8, 6), HALF, HALF, hflip=0.0, pad=0, erasing=0.0)(img, np.random.default_rng(0))
    assert torch.allclose(same, _expected(np.asarray(img)))


def test_pad_and_crop_is_a_shifted_window_of_the_padded_image():
    img, pad = _ramp(), 2
    padded = np.pad(np.asarray(img), ((pad, pad), (pad, pad), (0, 0)))
    windows = {
        (top, left): _expected(padded[top : top + 8, left : left + 6])
        for top in range(2 * pad + 1)
        for left in range(2 * pad + 1)
    }
    transform = TrainTransform((8, 6), HALF, HALF, hflip=0.0, pad=pad, erasing=0.0)
    seen = set()
    for seed in range(40):
        out = transform(img, np.random.default_rng(seed))
        assert out.shape == (3, 8, 6)
        matches = [offset for offset, window in windows.items() if torch.allclose(out, window, atol=1e-6)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # the offset really is random, over the whole range


def test_erasing_box_bounds():
    height, width = 64, 32
    ratios = []
    for seed in range(300):
        box = erase_box(height, width, np.random.default_rng(seed))
        assert box is not None  # a 64x32 image always fits one within 10 tries
        top, left, h, w = box
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        # rounding h and w moves the area by at most (h + w) / 2 + 1/4 pixels
        slack = (h + w) / 2 + 0.25
        assert 0.02 * height * width - slack <= h * w <= 0.33 * height * width + slack
        # the unrounded sides h*, w* lie within 0.5 of h, w and h* / w* lies in [0.3, 3.3]
        assert (h - 0.5) / (w + 0.5) <= 3.3 and (h + 0.5) / (w - 0.5) >= 0.3
        ratios.append(h / w)
    assert min(ratios) < 0.6 and max(ratios) > 2.0  # both ends of the ratio range are used


def test_erasing_zeroes_one_rectangle_after_normalisation():
    img = Image.new("RGB", (32, 64), (255, 255, 255))  # normalises to 1.0 everywhere
    transform = TrainTransform((64, 32), HALF, HALF, hflip=0.0, pad=0, erasing=1.0)
    out = transform(img, np.random.default_rng(3))
    zero = out == 0.0  # (3, H, W)
    assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
    ys, xs = torch.nonzero(zero[0], as_tuple=True)
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    assert int(zero[0].sum()) == h * w  # one filled rectangle
    assert 0.02 * 64 * 32 - (h + w) <= h * w <= 0.33 * 64 * 32 + (h + w)
    assert torch.all(out[~zero] == 1.0)


def test_same_seed_same_output_different_seed_different():
    img = _ramp(32, 16)
    transform = TrainTransform((32, 16), HALF, HALF, hflip=0.5, pad=4, erasing=0.5)
    a = transform(img, np.random.default_rng(123))
    b = transform(img, np.random.default_rng(123))
    assert torch.equal(a, b)
    others = [transform(img, np.random.default_rng(s)) for s in range(1, 6)]
    assert any(not torch.equal(a, o) for o in others)


def test_global_rng_state_is_not_used():
    img = _ramp(32, 16)
    transform = TrainTransform((32, 16), HALF, HALF)
    np.random.seed(0)
    torch.manual_seed(0)
    a = transform(img, np.random.default_rng(9))
    np.random.seed(1)
    torch.manual_seed(1)
    assert torch.equal(a, transform(img, np.random.default_rng(9)))


def test_unreadable_image_raises_oserror(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(OSError):
        load_image(path)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (3, 2), (1, 2, 3, 4)).save(rgba)
    assert load_image(rgba).mode == "RGB"
