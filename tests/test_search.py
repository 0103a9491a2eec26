"""reid-search: plain-folder and labelled galleries, the embedding cache, the picture, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid import search
from reid.search_grid import HIT, MISS
from tests.export_fixtures import make_export


@pytest.fixture(scope="module")
def export(synth_root: Path, tmp_path_factory) -> Path:
    return make_export(synth_root, tmp_path_factory.mktemp("search") / "best")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Six small images (jpg and png, one in a sub-folder), a broken jpg and a text file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    (root / "street").mkdir(parents=True)
    for i in range(6):
        pixels = rng.integers(0, 255, (48 + 8 * i, 24, 3), dtype=np.uint8)
        name = root / ("street" if i == 5 else "") / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(pixels).save(name)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    return root


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = search.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_plain_folder_is_a_gallery_and_the_second_query_reads_the_cache(export, folder, tmp_path, capsys, monkeypatch) -> None:
    common = ["--checkpoint", str(export), "--gallery", str(folder), "--cache-dir", str(tmp_path / "cache"), "--top-k", "4"]
    code, out, err = run(capsys, *common, "--query", "a man in a black coat", "--out", str(tmp_path / "a.png"))
    assert code == 0, err
    assert "skipped 1 unreadable image(s) of 7" in err and "broken.jpg" in err
    ranked = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in ranked] == [1, 2, 3, 4]
    scores = [float(r[1]) for r in ranked]
    assert scores == sorted(scores, reverse=True) and all(Path(r[2]).is_file() for r in ranked)
    picture = Image.open(tmp_path / "a.png")
    assert picture.mode == "RGB" and picture.width > 4 * 128 and picture.height > 256

    def no_encoding(*a, **k):
        raise AssertionError("the gallery was encoded again")

    monkeypatch.setattr(search, "encode_gallery", no_encoding)
    code, out2, err2 = run(capsys, *common, "--query", "a man in a black coat", "--out", str(tmp_path / "b.png"))
    assert code == 0 and "embeddings from cache" in out2 and "skipped 1 unreadable" in err2
    assert [line for line in out2.splitlines() if line[:4].strip().isdigit()] == [l for l in out.splitlines() if l[:4].strip().isdigit()]


def test_the_cache_key_follows_the_model_and_the_files(export, folder) -> None:
    paths = sorted(folder.rglob("*.jpg"))
    key = search.cache_key(export, paths)
    assert search.cache_key(export, paths) == key
    assert search.cache_key(export, paths[:-1]) != key
    os.utime(paths[0], ns=(1, 1))
    assert search.cache_key(export, paths) != key
    weights = next(export.glob("*.safetensors"))
    before = search.cache_key(export, paths)
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert search.cache_key(export, paths) != before


def test_a_labelled_gallery_frames_hits_green_and_misses_red(export, synth_root, tmp_path, capsys) -> None:
    records = json.loads((synth_root / "reid_raw.json").read_text())
    record = next(r for r in records if r["split"] == "val")
    out_png = tmp_path / "labelled.png"
    code, out, err = run(capsys, "--checkpoint", str(export), "--gallery", str(synth_root), "--split", "val",
                         "--query", record["captions"][0], "--top-k", "12", "--out", str(out_png),
                         "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    assert f"(person {record['id']})" in out  # recognised as a caption of the split
    rows = [line for line in out.splitlines() if line[:4].strip().isdigit()]
    hits = sum(line.endswith(", hit]") for line in rows)
    assert len(rows) == 12 and all("[person " in line for line in rows)
    pixels = np.asarray(Image.open(out_png)).reshape(-1, 3)
    count = {name: int((pixels == np.array(colour)).all(1).sum()) for name, colour in (("hit", HIT), ("miss", MISS))}
    assert (count["hit"] > 1000) == (hits > 0) and (count["miss"] > 1000) == (hits < 12)


def test_rank_gallery_lists_the_best_rows_by_score() -> None:
    gallery = torch.nn.functional.normalize(torch.randn(6, 256, generator=torch.Generator().manual_seed(0)), dim=1)
    query = gallery[2] + 0.1 * gallery[4]
    rows = search.rank_gallery(query, gallery, top_k=5)
    expected = torch.argsort(gallery @ query, descending=True)[:5].tolist()
    assert [r[0] for r in rows] == expected and rows[0][0] == 2
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)
    assert len(search.rank_gallery(query, gallery, top_k=50)) == 6  # top_k > gallery: all of it


@pytest.mark.parametrize("case, message", [
    ("empty query", "the query is empty"),
    ("no images", "no images in this folder"),
    ("not an export", "not an exported reid model"),
    ("all unreadable", "none of the 1 gallery images could be read"),
    ("unknown words", "none of the query's words are in the model's vocabulary"),
])
def test_bad_input_is_one_line_and_exit_status_2(case, message, export, folder, tmp_path, capsys) -> None:
    args = {"--checkpoint": str(export), "--gallery": str(folder), "--query": "a woman in a red coat",
            "--out": str(tmp_path / "x.png"), "--cache-dir": str(tmp_path / "cache")}
    if case == "empty query":
        args["--query"] = "   "
    elif case == "no images":
        (tmp_path / "empty").mkdir()
        args["--gallery"] = str(tmp_path / "empty")
    elif case == "not an export":
        args["--checkpoint"] = str(folder)
    elif case == "all unreadable":
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG broken")
        args["--gallery"] = str(tmp_path / "bad")
    else:
        args["--query"] = "zzqx qqxz"
    code, out, err = run(capsys, *[x for pair in args.items() for x in pair])
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()
