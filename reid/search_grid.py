"""The picture ``reid-search`` writes: the query on top, then the top-k images with rank, score and
file name under each; a green (same person) or red (another person) frame when that is known.

PIL only. The text uses Pillow's bundled scalable font (``ImageFont.load_default(size)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw, ImageFont

CELL_W, CELL_H = 128, 256  # the image area of a cell: pedestrian crops are about 1:2
FRAME = 6  # frame width around each image
GAP = 18  # between cells
MARGIN = 24
COLUMNS = 5
HIT, MISS, UNKNOWN = (34, 153, 68), (214, 48, 39), (190, 190, 190)
INK, MUTED, PANEL = (30, 30, 30), (110, 110, 110), (242, 242, 242)


@dataclass
class Tile:
    path: Path  # the image (an unreadable one shows as a grey panel)
    rank: int  # 1-based
    score: float  # the mode's score: a cosine, or the sum of two (composed standard mode)
    name: str  # shown under the image (file name relative to the gallery)
    hit: Optional[bool]  # same person as the query; None when unknown


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _shorten(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, with its middle replaced by '…' until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 4:
        keep -= 1
        short = text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2) :]
        if draw.textlength(short, font=font) <= width:
            return short
    return "…"


def _fit(image: Image.Image) -> Image.Image:
    """Scale to fit CELL_W x CELL_H (aspect kept) and centre on a neutral panel."""
    scale = min(CELL_W / image.width, CELL_H / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    panel = Image.new("RGB", (CELL_W, CELL_H), PANEL)
    panel.paste(image.resize(size, Image.BICUBIC), ((CELL_W - size[0]) // 2, (CELL_H - size[1]) // 2))
    return panel


def _load(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, ValueError):
        return Image.new("RGB", (CELL_W, CELL_H), PANEL)


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, pid: int, font: ImageFont.ImageFont) -> None:
    for colour, text in ((HIT, f"person {pid}, the query's"), (MISS, "another person")):
        draw.rectangle([x, y + 2, x + 11, y + 13], fill=colour)
        draw.text((x + 17, y), text, fill=MUTED, font=font)
        x += 17 + int(draw.textlength(text, font=font)) + 22


def _tile(canvas: Image.Image, draw: ImageDraw.ImageDraw, tile: Tile, x0: int, y0: int, fonts: tuple) -> None:
    label, small = fonts
    colour = UNKNOWN if tile.hit is None else (HIT if tile.hit else MISS)
    box = [x0, y0, x0 + CELL_W + 2 * FRAME - 1, y0 + CELL_H + 2 * FRAME - 1]
    if tile.hit is None:  # nothing to say: a hairline, not a coloured frame
        draw.rectangle([box[0] + FRAME - 1, box[1] + FRAME - 1, box[2] - FRAME + 1, box[3] - FRAME + 1], outline=colour)
    else:
        draw.rectangle(box, fill=colour)
    canvas.paste(_fit(_load(tile.path)), (x0 + FRAME, y0 + FRAME))
    y = box[3] + 5
    draw.text((x0, y), f"#{tile.rank}", fill=INK, font=label)
    score = f"{tile.score:.3f}"
    draw.text((box[2] + 1 - draw.textlength(score, font=label), y), score, fill=INK if tile.hit is None else colour, font=label)
    draw.text((x0, y + 21), _shorten(draw, tile.name, small, box[2] - x0), fill=MUTED, font=small)


def render_grid(query: str, tiles: Sequence[Tile], notes: Sequence[str] = (), pid: Optional[int] = None) -> Image.Image:
    """The results picture (RGB): the query, ``notes`` (one muted line each), a colour legend when
    the query's person ``pid`` is known, then the tiles, COLUMNS per row."""
    columns = max(1, min(COLUMNS, len(tiles)))
    rows = (len(tiles) + columns - 1) // columns
    cell_w, cell_h = CELL_W + 2 * FRAME, CELL_H + 2 * FRAME + 44  # + two lines of text
    width = 2 * MARGIN + columns * cell_w + (columns - 1) * GAP
    title_font, small, label = _font(18), _font(12), _font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = _wrap(probe, f"\u201c{query}\u201d", title_font, width - 2 * MARGIN)
    header = 26 * len(wrapped) + 18 * (len(notes) + (pid is not None)) + 14
    height = MARGIN + header + rows * cell_h + (rows - 1) * GAP + MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    for line in wrapped:
        draw.text((MARGIN, y), line, fill=INK, font=title_font)
        y += 26
    for note in notes:
        draw.text((MARGIN, y), _shorten(draw, note, small, width - 2 * MARGIN), fill=MUTED, font=small)
        y += 18
    if pid is not None:
        _legend(draw, MARGIN, y, pid, small)
        y += 18
    top = y + 14
    for i, tile in enumerate(tiles):
        _tile(canvas, draw, tile, MARGIN + (i % columns) * (cell_w + GAP), top + (i // columns) * (cell_h + GAP), (label, small))
    return canvas


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]
