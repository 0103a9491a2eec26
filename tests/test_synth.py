"""The synthetic dataset: CUHK-PEDES format, determinism, splits, factors, captions, CLI, atomicity."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reid.data import synth
from reid.data.synth_render import render
from reid.errors import DataError

NUM_IDS, SIZE = 12, (64, 32)  # small and fast: ~80 images
MALE = {"he", "his", "man", "guy", "male", "gentleman", "boy"}
FEMALE = {"she", "her", "woman", "lady", "female", "girl"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    synth.generate(out, NUM_IDS, seed=7, image_size=SIZE)
    return out


def _load(out: Path) -> tuple[list[dict], dict, dict]:
    records = json.loads((out / "reid_raw.json").read_text())
    factors = json.loads((out / "synth_factors.json").read_text())
    meta = json.loads((out / "synth_meta.json").read_text())
    return records, factors, meta


def test_cuhk_format(dataset):
    records, _, _ = _load(dataset)
    assert len(records) >= 4 * NUM_IDS
    for rec in records:
        assert set(rec) == {"split", "captions", "file_path", "id", "processed_tokens"}
        assert rec["split"] in ("train", "val", "test") and type(rec["id"]) is int
        assert isinstance(rec["file_path"], str) and not rec["file_path"].startswith("/")
        assert len(rec["captions"]) >= 2 and all(isinstance(c, str) and c for c in rec["captions"])
        assert len(rec["processed_tokens"]) == len(rec["captions"])
        for caption, tokens in zip(rec["captions"], rec["processed_tokens"]):
            # independent of synth_text.tokenize: lower-case, punctuation other than - and ' dropped
            assert tokens == re.sub(r"[^a-z0-9'\- ]", " ", caption.lower()).split()
        with Image.open(dataset / "imgs" / rec["file_path"]) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (SIZE[1], SIZE[0])
    assert sorted({r["id"] for r in records}) == list(range(1, NUM_IDS + 1))
    assert len({r["file_path"] for r in records}) == len(records)


def test_splits_disjoint_and_counted(dataset):
    records, _, meta = _load(dataset)
    ids = defaultdict(set)
    for rec in records:
        ids[rec["split"]].add(rec["id"])
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    assert [len(ids[s]) for s in ("train", "val", "test")] == [8, 2, 2]
    for split, count in meta["counts"].items():
        rows = [r for r in records if r["split"] == split]
        assert count == {"identities": len(ids[split]), "images": len(rows),
                         "captions": sum(len(r["captions"]) for r in rows)}
    assert synth.split_sizes(10_000) == {"train": 7000, "val": 1500, "test": 1500}
    assert synth.split_sizes(3) == {"train": 1, "val": 1, "test": 1}


def test_factors_side_file(dataset):
    records, factors, meta = _load(dataset)
    assert set(factors) == {r["file_path"] for r in records}
    outfits, owner = defaultdict(set), {}
    for rec in records:
        f = factors[rec["file_path"]]
        assert f["id"] == rec["id"] and f["split"] == rec["split"]
        assert set(f["clothing"]) >= {"upper_type", "upper_colour", "lower_type", "lower_colour",
                                      "shoes_colour", "bag"}
        assert set(f["camera"]) >= {"scale", "shift_x", "brightness", "background", "facing"}
        assert owner.setdefault(f["outfit_id"], rec["id"]) == rec["id"]  # outfit ids are per person
        outfits[rec["id"]].add(f["outfit_id"])
    assert all(len(o) == synth.OUTFITS_PER_PERSON for o in outfits.values())  # >= 3: clothing-change needs 2 others
    assert meta["num_outfits"] == len(owner)
    by_person, by_outfit = defaultdict(list), defaultdict(list)
    for f in factors.values():
        by_person[f["id"]].append(json.dumps(f["identity"], sort_keys=True))
        by_outfit[f["outfit_id"]].append(json.dumps(f["clothing"], sort_keys=True))
    assert all(len(set(v)) == 1 for v in by_person.values())  # identity constant per person
    assert all(len(set(v)) == 1 for v in by_outfit.values())  # clothing constant per outfit
    for pid, oids in outfits.items():  # a person's outfits differ in a garment
        designs = {by_outfit[o][0] for o in oids}
        assert len(designs) == len(oids)
    assert len({f["identity"]["height"] for f in factors.values()}) == NUM_IDS  # continuous factors


def test_clothing_independent_of_identity():
    """Outfits come from one distribution for everybody: skirt / dress rates match across genders."""
    rate = {"man": [], "woman": []}
    for pid in range(1, 3001):
        identity = synth.sample_identity(synth._rng(0, pid, synth._IDENTITY))
        outfit = synth.sample_outfit(synth._rng(0, pid, synth._OUTFIT))
        rate[identity.gender].append(outfit.lower_type in ("skirt", "long skirt", "dress"))
    assert abs(np.mean(rate["man"]) - np.mean(rate["woman"])) < 0.05
    assert 0.15 < np.mean(rate["man"]) < 0.45


def test_continuous_factors_sit_inside_separated_bands_of_their_words():
    from reid.data.synth_text import identity_words

    for pid in range(300):
        ident = synth.sample_identity(synth._rng(0, pid, synth._IDENTITY))
        words = identity_words(ident)
        for value, bands, word in ((ident.height, synth.HEIGHT_BANDS, words["height"]),
                                   (ident.build, synth.BUILD_BANDS, words["build"]),
                                   (ident.skin_tone, synth.SKIN_BANDS, words["skin"])):
            lo, hi = bands[word]
            assert lo <= value <= hi, (word, value)
    for bands in (synth.HEIGHT_BANDS, synth.BUILD_BANDS, synth.SKIN_BANDS):  # gaps between the bands
        edges = sorted(bands.values())
        assert all(a[1] < b[0] for a, b in zip(edges, edges[1:]))


def test_captions_state_the_factors(dataset):
    records, factors, _ = _load(dataset)
    for rec in records:
        f = factors[rec["file_path"]]
        ident, cloth = f["identity"], f["clothing"]
        assert rec["captions"][0] != rec["captions"][1]
        for caption, tokens in zip(rec["captions"], rec["processed_tokens"]):
            assert 12 <= len(tokens) <= 45, caption
            words = set(tokens)
            own, other = (MALE, FEMALE) if ident["gender"] == "man" else (FEMALE, MALE)
            assert words & own and not words & other, caption
            assert words & {"hair", "bald", "ponytail"}, caption
            assert words & {"skin"} and words & {"short", "tall", "average", "medium"}, caption  # every fact
            for colour in (cloth["upper_colour"], cloth["lower_colour"], cloth["shoes_colour"]):
                assert words & ({colour, "gray"} if colour == "grey" else {colour}), (colour, caption)


def _front_camera(rng: np.random.Generator) -> synth.Camera:
    cam = synth.sample_camera(rng)
    return dataclasses.replace(cam, facing="front", noise=0.0, mirror=False, brightness=1.0, tint=(1, 1, 1))


def test_every_factor_is_visible():
    """Changing any single identity or clothing factor changes the rendered pixels."""
    rng = np.random.default_rng(3)
    identity = synth.Identity("man", "young", 0.9, 1.0, 0.3, "brown", 0.0, "medium", 1.0, 0.48, False)
    outfit = synth.Outfit("jacket", "red", "trousers", "blue", "shoes", "white", "handbag", "black")
    camera = _front_camera(rng)
    base = np.asarray(render(identity, outfit, camera, (128, 64)), dtype=np.int16)
    changes = {
        "gender": "woman", "age": "old", "height": 0.84, "build": 1.3, "skin_tone": 0.9,
        "hair_colour": "blonde", "hair_shade": 1.0, "hair_style": "long", "head_size": 1.1, "leg_ratio": 0.45,
        "beard": True,
        "upper_type": "coat", "upper_colour": "green", "lower_type": "shorts", "lower_colour": "yellow",
        "shoes_type": "boots", "shoes_colour": "red", "bag": "backpack", "bag_colour": "pink",
    }
    all_fields = [f.name for f in dataclasses.fields(synth.Identity) + dataclasses.fields(synth.Outfit)]
    assert sorted(changes) == sorted(all_fields)  # a new factor must be shown to be visible too
    for field, value in changes.items():
        who = dataclasses.replace(identity, **{field: value}) if hasattr(identity, field) else identity
        what = dataclasses.replace(outfit, **{field: value}) if hasattr(outfit, field) else outfit
        changed = np.asarray(render(who, what, camera, (128, 64)), dtype=np.int16)  # (H, W, 3)
        diff = np.abs(changed - base).max(-1)  # (H, W)
        # hair_shade is a subtle continuous factor (+-15% of the hair colour); the rest are plain to see
        assert (diff > (8 if field == "hair_shade" else 30)).sum() >= 20, field


def test_deterministic_across_runs_and_workers(dataset, tmp_path):
    again = tmp_path / "again"
    synth.generate(again, NUM_IDS, seed=7, image_size=SIZE, workers=2)
    assert (again / "reid_raw.json").read_bytes() == (dataset / "reid_raw.json").read_bytes()
    assert (again / "synth_factors.json").read_bytes() == (dataset / "synth_factors.json").read_bytes()
    images = sorted(p.relative_to(dataset) for p in (dataset / "imgs").rglob("*.jpg"))
    assert images == sorted(p.relative_to(again) for p in (again / "imgs").rglob("*.jpg"))
    assert all((dataset / p).read_bytes() == (again / p).read_bytes() for p in images)
    other = tmp_path / "other"
    synth.generate(other, NUM_IDS, seed=8, image_size=SIZE)
    assert (other / "reid_raw.json").read_bytes() != (dataset / "reid_raw.json").read_bytes()
    first = "imgs/synth/p00001_o0_v0.jpg"
    assert (other / first).read_bytes() != (dataset / first).read_bytes()


def test_idempotent_and_atomic(tmp_path):
    out = tmp_path / "ds"
    counts = synth.generate(out, 4, seed=1, image_size=SIZE)
    stamp = (out / "reid_raw.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert synth.generate(out, 4, seed=1, image_size=SIZE) == counts
    assert time.perf_counter() - start < 0.2
    assert (out / "reid_raw.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary siblings left behind
    # A partial dataset (killed before synth_meta.json) and one made with other arguments are replaced.
    (out / "synth_meta.json").unlink()
    (out / "reid_raw.json").write_text("[")
    assert synth.generate(out, 4, seed=1, image_size=SIZE) == counts
    assert json.loads((out / "reid_raw.json").read_text())
    synth.generate(out, 5, seed=1, image_size=SIZE)
    assert json.loads((out / "synth_meta.json").read_text())["num_ids"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="notes|did not write"):
        synth.generate(foreign, 4, seed=1, image_size=SIZE)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synth.main(["--out", str(out), "--num-ids", "4", "--seed", "2", "--image-size", "64", "32"]) == 0
    printed = capsys.readouterr().out
    assert "train: 2 ids" in printed and "images" in printed and "captions" in printed
    assert (out / "reid_raw.json").exists()


@pytest.mark.parametrize("argv", [
    ["--num-ids", "1"], ["--image-size", "16", "16"], ["--seed", "-1"], ["--workers", "0"],
    ["--num-ids", "many"], ["--bogus"], None,
])
def test_cli_bad_arguments(tmp_path, capsys, argv):
    args = ["--out", str(tmp_path / "x")] + argv if argv is not None else []
    assert synth.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
