"""Tiny on-disk datasets in the three annotation formats, for the data tests (no synth.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from reid.config import DataConfig
from reid.data.formats import FORMATS

# Written in CUHK-PEDES's style (two annotators per image, free-form English).
CAPTIONS = [
    "The man has short black hair and is wearing a white t-shirt with black shorts. He is carrying a blue backpack.",
    "A woman wearing a red coat, black pants and white sneakers.",
    "A young man with short hair is wearing a grey hoodie and blue jeans.",
    "The woman has long brown hair that is pulled back into a ponytail. She is wearing a black jacket over a white shirt and carrying a brown purse.",
    "The lady is tall and slim. She has long black hair.",
    "A heavyset man in his forties with a bald head, wearing a navy polo shirt and tan shorts.",
    "The girl wears glasses, a yellow shirt and denim shorts.",
    "This person is an older man with a grey beard. He has on a dark blue jacket, khaki pants and brown boots.",
    "A middle-aged woman with shoulder length curly hair. She is wearing a green sweater, a black skirt and black heels.",
    "A man in a black suit and black shoes is walking down the street.",
    "The pedestrian is walking toward the camera.",
    "Her hair is tied in a ponytail and she is wearing a pink dress and white sandals.",
]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 200, 200), (200, 40, 200)]


def solid_jpeg(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (32, 16)) -> None:
    """A solid-colour JPEG of (H, W) = size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), colour).save(path, quality=95)


def make_records(dataset: str, splits: dict[str, int], images_per_id: int = 2, captions_per_image: int = 2) -> list[dict]:
    """Annotation records: ``splits`` maps split -> number of identities (1-based ids, contiguous)."""
    key = FORMATS[dataset].path_key
    records, pid, c = [], 1, 0
    for split, num_ids in splits.items():
        for _ in range(num_ids):
            for v in range(images_per_id):
                caps = [CAPTIONS[(c + k) % len(CAPTIONS)] for k in range(captions_per_image)]
                c += captions_per_image
                record = {"split": split, "captions": caps, key: f"{split}/{pid:04d}_{v}.jpg", "id": pid}
                if dataset != "rstpreid":
                    record["processed_tokens"] = [cap.lower().split() for cap in caps]
                records.append(record)
            pid += 1
    return records


def write_dataset(
    root: Path,
    dataset: str = "cuhk_pedes",
    splits: Optional[dict[str, int]] = None,
    records: Optional[list[dict]] = None,
    image_size: tuple[int, int] = (32, 16),
    **kwargs: Any,
) -> list[dict]:
    """Write annotation + images under ``root``; returns the records written."""
    if records is None:
        default = {s: 4 for s in FORMATS[dataset].splits}
        records = make_records(dataset, splits or default, **kwargs)
    root.mkdir(parents=True, exist_ok=True)
    (root / FORMATS[dataset].annotation).write_text(json.dumps(records))
    key = FORMATS[dataset].path_key
    for i, rec in enumerate(records):
        if isinstance(rec, dict) and isinstance(rec.get(key), str):
            solid_jpeg(root / "imgs" / rec[key], COLOURS[i % len(COLOURS)], image_size)
    return records


def data_config(root: Path, cache: Path, **overrides: Any) -> DataConfig:
    """A small DataConfig for tests (tiny images, no workers)."""
    values: dict[str, Any] = dict(
        root=str(root), cache_dir=str(cache), image_size=(32, 16), batch_size=4, num_instances=2,
        num_workers=0, text_max_length=32,
    )
    values.update(overrides)
    return DataConfig(**values)
