"""A synthetic pedestrian dataset in CUHK-PEDES's on-disk format, with ground-truth factors.

    reid-synth --out data/synth --num-ids 1000 --seed 0 --workers 2
    python -m reid.data.synth --out data/synth --num-ids 120

Every person has identity factors (gender, age, height, build, skin tone, hair colour / style /
shade, head size, leg length, beard) drawn once, and 3 outfits drawn independently of them (upper
garment type and colour, lower garment type and colour, shoe type and colour, bag), each seen in 2-3
views (facing, scale, position, arm / leg pose, exposure, colour cast, background, noise). Every
caption names every identity factor its image shows (see :mod:`reid.data.synth_text`). Written:

- ``reid_raw.json``: CUHK-PEDES's list of ``{"split", "captions", "file_path", "processed_tokens",
  "id"}`` records, one per image; identities are contiguous blocks of 1-based ids (train, val, test);
- ``imgs/synth/p00012_o1_v2.jpg``: the images;
- ``synth_factors.json``: per ``file_path``, the id, ``outfit_id``, identity / clothing / camera
  factors, and per caption the identity factors it names (``caption_facts``, for the attribute
  oracle of :mod:`reid.oracle`) — never in ``reid_raw.json``: a model must not see them;
- ``synth_meta.json``: generator version, arguments and per-split counts (written last).

Each identity has its own random streams, seeded from ``(seed, id, stream)``, so the bytes written
do not depend on ``workers``. Output goes to a temporary sibling directory renamed into place at the
end; a directory that already holds the same dataset is left untouched.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from reid.data.synth_render import COLOURS, render
from reid.data.synth_text import identity_words, make_captions, tokenize
from reid.errors import DataError, ReidError, report_user_errors

VERSION = 2  # 2: every caption names every visible identity factor; 3 outfits per person
SPLITS = ("train", "val", "test")
JPEG_QUALITY = 90
MIN_IDS, MIN_SIDE = 3, 32
_OURS = {"reid_raw.json", "synth_factors.json", "synth_meta.json", "imgs"}  # what a dataset dir holds
_IDENTITY, _OUTFIT, _CAMERA, _TEXT = range(4)  # a person's random streams
OUTFITS_PER_PERSON = 3  # the clothing-change protocol needs >= 2 other outfits to find a person in


@dataclass(frozen=True)
class Identity:
    gender: str  # "man" | "woman"
    age: str  # "young" | "old"
    height: float  # body height relative to the tallest person, [0.82, 1.0]
    build: float  # body width factor, [0.75, 1.35]
    skin_tone: float  # 0 = pale ... 1 = dark
    hair_colour: str  # key of synth_render.HAIR_COLOURS ("none" when bald)
    hair_shade: float  # [-1, 1]: lighter / darker within the colour
    hair_style: str  # "bald" | "short" | "medium" | "long" | "ponytail" | "bun"
    head_size: float  # [0.9, 1.1]
    leg_ratio: float  # legs as a fraction of the height, [0.45, 0.51]
    beard: bool


@dataclass(frozen=True)
class Outfit:
    upper_type: str  # t-shirt | shirt | jacket | coat | hoodie | tank top | dress
    upper_colour: str
    lower_type: str  # trousers | jeans | shorts | skirt | long skirt | dress
    lower_colour: str
    shoes_type: str  # shoes | boots
    shoes_colour: str
    bag: str  # none | backpack | handbag | shoulder bag
    bag_colour: str  # "none" without a bag


@dataclass(frozen=True)
class Camera:
    facing: str  # "front" | "back"
    mirror: bool
    scale: float  # fraction of the frame height a person of height 1.0 fills
    shift_x: float  # fractions of the frame width / height
    shift_y: float
    arm_out: tuple[float, float]  # degrees from vertical, (image-left, image-right)
    arm_swing: float  # degrees; foreshortens both arms
    elbow_bend: float
    leg_out: tuple[float, float]
    stride: float  # [0, 1]: how far the stepping foot is lifted
    step_leg: int
    brightness: float
    tint: tuple[float, float, float]
    noise: float  # std of the additive noise, in pixel values
    background: str  # plain | street | stripes | park
    bg_colour: tuple[int, int, int]
    ground_colour: tuple[int, int, int]
    texture_seed: int  # background details and noise


def _choice(rng: np.random.Generator, options: Sequence[str], p: Optional[Sequence[float]] = None) -> str:
    return options[int(rng.choice(len(options), p=p))]


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), 4)


# Continuous identity factors are drawn inside separated bands, one per word a caption uses for them
# (synth_text.identity_words), with gaps between the bands: a person's height, build or skin is
# then never on the boundary between two words, so what the caption says is what the image shows.
HEIGHT_BANDS = {"short": (0.82, 0.86), "average": (0.895, 0.925), "tall": (0.955, 1.0)}
BUILD_BANDS = {"slim": (0.75, 0.87), "average": (0.99, 1.09), "heavy": (1.21, 1.35)}
SKIN_BANDS = {"pale": (0.0, 0.16), "light": (0.3, 0.42), "tan": (0.58, 0.7), "dark": (0.84, 1.0)}


def _band(rng: np.random.Generator, bands: dict[str, tuple[float, float]]) -> float:
    lo, hi = bands[_choice(rng, tuple(bands))]
    return _u(rng, lo, hi)


def sample_identity(rng: np.random.Generator) -> Identity:
    """One person's identity factors; hair styles follow gender and grey hair age, as in life."""
    gender = _choice(rng, ("man", "woman"))
    age = _choice(rng, ("young", "old"), p=(0.8, 0.2))
    if gender == "man":
        style = _choice(rng, ("short", "medium", "long", "ponytail", "bald"), (0.62, 0.18, 0.06, 0.04, 0.1))
    else:
        style = _choice(rng, ("short", "medium", "long", "ponytail", "bun"), (0.14, 0.22, 0.34, 0.2, 0.1))
    if style == "bald" and age == "young" and rng.random() < 0.7:
        style = "short"  # keep baldness mostly for the old
    colours = ("grey", "white") if age == "old" else ("black", "brown", "blonde", "red")
    weights = (0.6, 0.4) if age == "old" else (0.42, 0.3, 0.18, 0.1)
    hair_colour = "none" if style == "bald" else _choice(rng, colours, weights)
    return Identity(
        gender=gender, age=age, height=_band(rng, HEIGHT_BANDS), build=_band(rng, BUILD_BANDS),
        skin_tone=_band(rng, SKIN_BANDS), hair_colour=hair_colour, hair_shade=_u(rng, -1.0, 1.0),
        hair_style=style, head_size=_u(rng, 0.9, 1.1), leg_ratio=_u(rng, 0.45, 0.51),
        beard=bool(gender == "man" and rng.random() < 0.3),
    )


_NAMES = tuple(COLOURS)
_UPPER = ("t-shirt", "shirt", "jacket", "coat", "hoodie", "tank top", "dress")
_LOWER = ("trousers", "jeans", "shorts", "skirt", "long skirt")
_SHOE_COLOURS = ("black", "white", "brown", "grey", "red", "blue")


def sample_outfit(rng: np.random.Generator) -> Outfit:
    """One outfit design, from the same distribution for everybody (independent of identity)."""
    upper = _choice(rng, _UPPER, (0.2, 0.16, 0.18, 0.12, 0.14, 0.1, 0.1))
    upper_colour = _choice(rng, _NAMES)
    if upper == "dress":
        lower, lower_colour = "dress", upper_colour
    else:
        lower = _choice(rng, _LOWER, (0.34, 0.26, 0.16, 0.14, 0.1))
        # Jeans are mostly denim-coloured; other garments take any colour.
        denim = _choice(rng, ("blue", "black", "grey", "white"), (0.55, 0.2, 0.15, 0.1))
        lower_colour = denim if lower == "jeans" else _choice(rng, _NAMES)
    shoes_type = _choice(rng, ("shoes", "boots"), (0.75, 0.25))
    shoes_colour = _choice(rng, _SHOE_COLOURS, (0.3, 0.25, 0.15, 0.1, 0.1, 0.1))
    bag = _choice(rng, ("none", "backpack", "handbag", "shoulder bag"), (0.35, 0.3, 0.15, 0.2))
    return Outfit(
        upper_type=upper, upper_colour=upper_colour, lower_type=lower, lower_colour=lower_colour,
        shoes_type=shoes_type, shoes_colour=shoes_colour, bag=bag,
        bag_colour="none" if bag == "none" else _choice(rng, _NAMES),
    )


def sample_outfits(rng: np.random.Generator, num: int) -> list[Outfit]:
    """``num`` outfits of one person, each differing from the others in its upper or lower garment."""
    outfits: list[Outfit] = []
    while len(outfits) < num:
        new = sample_outfit(rng)
        if all(_garments(new) != _garments(o) for o in outfits):
            outfits.append(new)
    return outfits


def _garments(o: Outfit) -> tuple[str, ...]:
    return (o.upper_type, o.upper_colour, o.lower_type, o.lower_colour)


def _muted(rng: np.random.Generator, lo: float, hi: float) -> tuple[int, int, int]:
    """A background colour: low saturation, so garments stand out from it."""
    grey = rng.uniform(lo, hi)
    return tuple(int(np.clip(grey + rng.uniform(-25, 25), 0, 255)) for _ in range(3))  # type: ignore


_BACKGROUNDS = ("plain", "street", "stripes", "park")


def sample_camera(rng: np.random.Generator) -> Camera:
    """One view: facing, framing, pose, exposure and background."""
    return Camera(
        facing=_choice(rng, ("front", "back"), (0.65, 0.35)), mirror=bool(rng.random() < 0.5),
        scale=_u(rng, 0.88, 0.96), shift_x=_u(rng, -0.08, 0.08), shift_y=_u(rng, -0.03, 0.02),
        arm_out=(_u(rng, 3, 16), _u(rng, 3, 16)), arm_swing=_u(rng, -35, 35), elbow_bend=_u(rng, 0, 20),
        leg_out=(_u(rng, 0, 7), _u(rng, 0, 7)), stride=_u(rng, 0, 1), step_leg=int(rng.integers(2)),
        brightness=_u(rng, 0.82, 1.12), tint=(_u(rng, 0.95, 1.05), _u(rng, 0.95, 1.05), _u(rng, 0.95, 1.05)),
        noise=_u(rng, 0.0, 6.0), background=_choice(rng, _BACKGROUNDS),
        bg_colour=_muted(rng, 70, 200), ground_colour=_muted(rng, 60, 170),
        texture_seed=int(rng.integers(2**31)),
    )


def _rng(seed: int, pid: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, pid, stream])


def _make_person(job: tuple[int, int, str, tuple[int, int]]) -> list[dict]:
    """Render and caption every image of person ``pid`` into ``img_dir``; one dict per image."""
    seed, pid, img_dir, image_size = job
    identity = sample_identity(_rng(seed, pid, _IDENTITY))
    outfit_rng, camera_rng, text_rng = (_rng(seed, pid, s) for s in (_OUTFIT, _CAMERA, _TEXT))
    outfits = sample_outfits(outfit_rng, OUTFITS_PER_PERSON)
    images = []
    for o, outfit in enumerate(outfits):
        for v in range(int(camera_rng.integers(2, 4))):
            camera = sample_camera(camera_rng)
            name = f"p{pid:05d}_o{o}_v{v}.jpg"
            render(identity, outfit, camera, image_size).save(Path(img_dir) / name, quality=JPEG_QUALITY)
            captions = make_captions(identity, outfit, camera.facing, text_rng)
            images.append({
                "file_path": f"synth/{name}", "outfit_index": o, "view_index": v,
                "captions": [text for text, _ in captions], "caption_facts": [facts for _, facts in captions],
                "identity": {**asdict(identity), "words": identity_words(identity)},
                "clothing": asdict(outfit), "camera": asdict(camera),
            })
    return images


def split_sizes(num_ids: int) -> dict[str, int]:
    """About 70 / 15 / 15 identities; val and test get at least 2 each from 10 identities on."""
    floor = 2 if num_ids >= 10 else 1
    num_val = max(floor, round(0.15 * num_ids))
    num_test = max(floor, round(0.15 * num_ids))
    return {"train": num_ids - num_val - num_test, "val": num_val, "test": num_test}


def _split_of(num_ids: int) -> list[str]:
    """Split of each identity (index pid - 1): contiguous blocks, as CUHK-PEDES numbers them."""
    return [name for name, n in split_sizes(num_ids).items() for _ in range(n)]


def _check_args(num_ids: int, seed: int, image_size: tuple[int, ...], workers: int) -> None:
    """ValueError naming the first impossible argument."""
    if num_ids < MIN_IDS:
        raise ValueError(f"num_ids (--num-ids) must be >= {MIN_IDS}, one identity per split, got {num_ids}")
    if seed < 0:
        raise ValueError(f"seed (--seed) must be >= 0, got {seed}")
    if len(image_size) != 2 or min(image_size) < MIN_SIDE:
        raise ValueError(f"image_size (--image-size H W) needs both sides >= {MIN_SIDE}, got {image_size}")
    if workers < 1:
        raise ValueError(f"workers (--workers) must be >= 1, got {workers}")


def _params(num_ids: int, seed: int, image_size: tuple[int, int]) -> dict:
    return {"generator": "reid-synth", "version": VERSION, "num_ids": num_ids, "seed": seed,
            "image_size": list(image_size)}


def _existing(out: Path, params: dict) -> Optional[dict]:
    """The counts of a complete dataset in ``out`` made with ``params``, else None."""
    try:
        meta = json.loads((out / "synth_meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or {k: meta.get(k) for k in params} != params:
        return None
    return meta.get("counts") if isinstance(meta.get("counts"), dict) else None


def _run_people(seed: int, num_ids: int, img_dir: Path, image_size: tuple[int, int],
                workers: int) -> list[list[dict]]:
    """Every person's image dicts, in id order whatever ``workers`` is."""
    jobs = [(seed, pid, str(img_dir), image_size) for pid in range(1, num_ids + 1)]
    if workers == 1:
        return [_make_person(job) for job in jobs]
    # spawn, not fork: the caller may be a training process with CUDA or thread pools initialised.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(_make_person, jobs, chunksize=max(1, min(32, num_ids // (8 * workers))))


def _write(tmp: Path, people: list[list[dict]], params: dict) -> dict:
    """reid_raw.json, synth_factors.json and (last) synth_meta.json; returns the per-split counts."""
    splits = _split_of(len(people))
    counts = {s: {"identities": 0, "images": 0, "captions": 0} for s in SPLITS}
    records, factors, outfit_id = [], {}, 0
    for pid, images in enumerate(people, start=1):
        split = splits[pid - 1]
        counts[split]["identities"] += 1
        for image in images:
            oid = outfit_id + image["outfit_index"]
            path, captions = image.pop("file_path"), image.pop("captions")
            records.append({"split": split, "captions": captions, "file_path": path,
                            "processed_tokens": [tokenize(c) for c in captions], "id": pid})
            factors[path] = {"id": pid, "split": split, "outfit_id": oid, **image}
            counts[split]["images"] += 1
            counts[split]["captions"] += len(captions)
        outfit_id += 1 + max(image["outfit_index"] for image in images)
    (tmp / "reid_raw.json").write_text(json.dumps(records))
    (tmp / "synth_factors.json").write_text(json.dumps(factors, separators=(",", ":")))
    meta = {**params, "num_outfits": outfit_id, "counts": counts}
    (tmp / "synth_meta.json").write_text(json.dumps(meta, indent=1))
    return counts


def _sibling(out: Path, tag: str) -> Path:
    """A new, uniquely named, hidden directory beside ``out`` (mode from the umask, unlike mkdtemp)."""
    path = out.parent / f".{out.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _publish(tmp: Path, out: Path, params: dict) -> Optional[dict]:
    """Rename ``tmp`` to ``out``, replacing a partial or different dataset there.

    Returns the counts of an identical dataset another process published first (``tmp`` is then
    discarded), else None.
    """
    for _ in range(3):
        try:
            os.rename(tmp, out)  # atomic; replaces ``out`` only when it is an empty directory
            return None
        except OSError:
            done = _existing(out, params)
            if done is not None:
                return done
            trash = _sibling(out, "old")
            try:  # move the partial / other dataset aside, then retry
                os.rename(out, trash / out.name)
            except FileNotFoundError:
                pass  # another process moved it already
            shutil.rmtree(trash, ignore_errors=True)
    raise DataError(f"{out}: could not move the new dataset into place; another process keeps replacing it")


def generate(out_dir: str | Path, num_ids: int, seed: int = 0, image_size: tuple[int, int] = (128, 64),
             workers: int = 1) -> dict:
    """Write the synthetic dataset for ``(num_ids, seed, image_size)`` to ``out_dir``.

    Returns ``{split: {"identities", "images", "captions"}}``. Returns at once when ``out_dir``
    already holds this dataset; replaces a partial one or one made with other arguments; raises
    DataError when ``out_dir`` holds files a generator did not write. ``workers`` processes render
    identities in parallel and change nothing in the output.
    """
    image_size = tuple(int(x) for x in image_size)
    _check_args(num_ids, seed, image_size, workers)
    out = Path(out_dir).expanduser().absolute()
    params = _params(num_ids, seed, image_size)
    done = _existing(out, params)
    if done is not None:
        return done
    if out.is_dir() and not {p.name for p in out.iterdir()} <= _OURS:
        raise DataError(f"{out}: exists and holds files reid-synth did not write; choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    try:
        img_dir = tmp / "imgs" / "synth"
        img_dir.mkdir(parents=True)
        counts = _write(tmp, _run_people(seed, num_ids, img_dir, image_size, workers), params)
        return _publish(tmp, out, params) or counts
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise _ArgError(message)


def _format_counts(counts: dict) -> str:
    return "; ".join(f"{s}: {c['identities']} ids, {c['images']} images, {c['captions']} captions"
                     for s, c in counts.items())


@report_user_errors
def main(argv: Optional[list[str]] = None) -> int:
    """``reid-synth``: write a synthetic dataset; prints its counts. Exit status 2 on bad arguments."""
    parser = _Parser(prog="reid-synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="dataset directory (CUHK-PEDES layout)")
    parser.add_argument("--num-ids", type=int, default=120, help="identities (>= 3; default 120)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=1, help="rendering processes (output is the same)")
    try:
        args = parser.parse_args(argv)
        _check_args(args.num_ids, args.seed, tuple(args.image_size), args.workers)
    except (_ArgError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        counts = generate(args.out, args.num_ids, args.seed, tuple(args.image_size), args.workers)
    except ReidError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {_format_counts(counts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
