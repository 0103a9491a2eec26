"""Annotation readers: round trip for the three formats, one test per bad input, the reid-data CLI."""

from __future__ import annotations

import json

import pytest

from reid.data.cli import main
from reid.data.formats import FORMATS, check_image_files, image_dir, read_annotations, summarize
from reid.errors import DataError
from tests.data_fixtures import make_records, solid_jpeg, write_dataset


@pytest.mark.parametrize("dataset", sorted(FORMATS))
def test_round_trip_counts(tmp_path, dataset):
    splits = {"train": 5, "test": 3} if dataset == "icfg_pedes" else {"train": 5, "val": 2, "test": 3}
    written = write_dataset(tmp_path, dataset, splits=splits, images_per_id=3, captions_per_image=2)
    records = read_annotations(tmp_path, dataset)
    assert len(records) == len(written)
    key = FORMATS[dataset].path_key
    assert [r.file_path for r in records] == [w[key] for w in written]
    assert [r.captions for r in records] == [w["captions"] for w in written]
    counts = summarize(records, dataset)
    for split, num_ids in splits.items():
        assert counts[split] == {"identities": num_ids, "images": 3 * num_ids, "captions": 6 * num_ids}
    check_image_files(tmp_path / FORMATS[dataset].annotation, records, image_dir(tmp_path))


def test_optional_parts_string_or_aligned_list(tmp_path):
    records = make_records("cuhk_pedes", {"train": 1}, images_per_id=2)
    records[0]["cloth_caption"] = "A red coat."
    records[1]["id_caption"] = ["A tall man.", "A short man."]
    write_dataset(tmp_path, records=records)
    first, second = read_annotations(tmp_path, "cuhk_pedes")
    assert first.cloth_captions == ["A red coat.", "A red coat."] and first.id_captions is None
    assert second.id_captions == ["A tall man.", "A short man."]


def _bad(tmp_path, mutate, dataset="cuhk_pedes"):
    records = make_records(dataset, {"train": 2, "test": 1})
    mutate(records)
    write_dataset(tmp_path, dataset, records=records)
    with pytest.raises(DataError) as info:
        read_annotations(tmp_path, dataset)
    message = str(info.value)
    assert "\n" not in message
    return message


def _set(i, key, value):
    def mutate(records):
        records[i][key] = value

    return mutate


def _drop(i, key):
    def mutate(records):
        del records[i][key]

    return mutate


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_drop(2, "captions"), "record 2 (train/0002_0.jpg): missing 'captions'"),
        (_set(1, "captions", []), "record 1 (train/0001_1.jpg): 'captions' is empty"),
        (_set(3, "captions", ["A man in a coat.", "  "]), "record 3 (train/0002_1.jpg): caption 1 is empty"),
        (_set(0, "captions", "A man in a coat."), "record 0 (train/0001_0.jpg): 'captions' must be a list of strings"),
        (_set(0, "captions", ["ok", 3]), "record 0 (train/0001_0.jpg): 'captions' must be a list of strings"),
        (_set(2, "id", "7"), "record 2 (train/0002_0.jpg): 'id' must be an integer, got '7'"),
        (_set(2, "id", True), "record 2 (train/0002_0.jpg): 'id' must be an integer"),
        (_set(1, "file_path", 12), "record 1: 'file_path' must be a non-empty string, got 12"),
        (_drop(1, "file_path"), "record 1: missing 'file_path'"),
        (_set(4, "split", "validation"), "record 4 (test/0003_0.jpg): unknown split 'validation'"),
        (_set(4, "id", 1), "record 4 (test/0003_0.jpg): identity 1 is in split 'test' here and in split 'train'"),
        (_set(2, "file_path", "train/0001_0.jpg"), "record 2 (train/0001_0.jpg): the same image is listed by record 0"),
        (_set(0, "cloth_caption", ["one"]), "record 0 (train/0001_0.jpg): 'cloth_caption' has 1 entries"),
        (_set(0, "id_caption", 5), "record 0 (train/0001_0.jpg): 'id_caption' must be a string or a list"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_record_is_one_line_naming_file_record_problem(tmp_path, mutate, expected):
    message = _bad(tmp_path, mutate)
    assert message.startswith(str(tmp_path / "reid_raw.json"))
    assert expected in message


def test_record_not_an_object(tmp_path):
    message = _bad(tmp_path, lambda records: records.insert(1, ["train", "x.jpg"]))
    assert "reid_raw.json: record 1: expected an object, got list" in message


def test_icfg_has_no_val_split(tmp_path):
    message = _bad(tmp_path, _set(0, "split", "val"), dataset="icfg_pedes")
    assert "ICFG-PEDES.json: record 0 (train/0001_0.jpg): unknown split 'val' (this dataset has train, test)" in message


def test_rstpreid_path_key(tmp_path):
    message = _bad(tmp_path, _drop(0, "img_path"), dataset="rstpreid")
    assert "data_captions.json: record 0: missing 'img_path'" in message


def test_top_level_not_a_list(tmp_path):
    (tmp_path / "reid_raw.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(DataError, match=r"reid_raw.json: the top level must be a list of records, got dict"):
        read_annotations(tmp_path, "cuhk_pedes")


def test_invalid_json(tmp_path):
    (tmp_path / "reid_raw.json").write_text('[{"split": "train",')
    with pytest.raises(DataError, match=r"reid_raw.json: not valid JSON"):
        read_annotations(tmp_path, "cuhk_pedes")


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match=r"ICFG-PEDES.json: annotation file not found"):
        read_annotations(tmp_path, "icfg_pedes")


def test_missing_image_file(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "imgs" / "val" / "0005_1.jpg").unlink()
    records = read_annotations(tmp_path, "cuhk_pedes")
    with pytest.raises(DataError) as info:
        check_image_files(tmp_path / "reid_raw.json", records, image_dir(tmp_path))
    assert "reid_raw.json: record 9 (val/0005_1.jpg): image file not found under" in str(info.value)


# ----------------------------------------------------------------------------------------------
# reid-data
# ----------------------------------------------------------------------------------------------


def test_cli_prints_counts(tmp_path, capsys):
    write_dataset(tmp_path, "rstpreid", splits={"train": 3, "val": 1, "test": 2})
    assert main(["--data-root", str(tmp_path), "--dataset", "rstpreid"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "data_captions.json (rstpreid)" in lines[0]
    assert lines[2].split()[:4] == ["train", "3", "6", "12"]
    assert lines[4].split()[:4] == ["test", "2", "4", "8"]


def test_cli_json(tmp_path, capsys):
    write_dataset(tmp_path, "icfg_pedes", splits={"train": 3, "test": 2}, captions_per_image=1)
    assert main(["--data-root", str(tmp_path), "--dataset", "icfg_pedes", "--json", "--check-images"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["train"]["captions"] == 6 and report["splits"]["test"]["identities"] == 2
    assert set(report["splits"]) == {"train", "test"}
    assert 0 < report["splits"]["train"]["with_clothing"] <= 6


def test_cli_bad_record_exit_2(tmp_path, capsys):
    records = make_records("cuhk_pedes", {"train": 2})
    records[1]["captions"] = []
    write_dataset(tmp_path, records=records)
    assert main(["--data-root", str(tmp_path), "--dataset", "cuhk_pedes"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "record 1 (train/0001_1.jpg): 'captions' is empty" in captured.err


def test_cli_unreadable_image_with_check_images(tmp_path, capsys):
    write_dataset(tmp_path, splits={"train": 2, "val": 1, "test": 1})
    (tmp_path / "imgs" / "train" / "0002_0.jpg").write_bytes(b"not a jpeg")
    assert main(["--data-root", str(tmp_path), "--dataset", "cuhk_pedes"]) == 0  # exists: fine
    capsys.readouterr()
    assert main(["--data-root", str(tmp_path), "--dataset", "cuhk_pedes", "--check-images"]) == 2
    err = capsys.readouterr().err
    assert "record 2 (train/0002_0.jpg): unreadable image" in err and err.count("\n") == 1


def test_cli_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--data-root", str(tmp_path), "--dataset", "market1501"]) == 2
    assert "error: argument --dataset: invalid choice" in capsys.readouterr().err
    assert main(["--data-root", str(tmp_path / "nowhere"), "--dataset", "cuhk_pedes"]) == 2
    assert "nowhere: dataset directory not found" in capsys.readouterr().err

