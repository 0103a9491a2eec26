"""Annotation readers: round trip for the three formats, one test per bad input, the reid-data CLI."""

from __future__ import annotations

import json

import pytest

from reid.data.cli import main
from reid.data.formats import FORMATS, annotation_path, check_image_files, image_dir, read_annotations, summarize
from reid.errors import DataError
from tests.data_fixtures import CAPTIONS, data_config, make_records, solid_jpeg, write_dataset


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


def test_missing_annotation_file_names_what_is_expected_and_what_is_there(tmp_path):
    with pytest.raises(DataError) as info:
        read_annotations(tmp_path, "icfg_pedes")
    assert str(info.value) == f"{tmp_path}: no annotation file for dataset 'icfg_pedes': expected ICFG-PEDES.json; found no .json file there"
    write_dataset(tmp_path, "rstpreid", splits={"train": 1})
    with pytest.raises(DataError) as info:
        read_annotations(tmp_path, "cuhk_pedes")
    assert str(info.value) == (f"{tmp_path}: no annotation file for dataset 'cuhk_pedes': expected reid_raw.json or "
                               "caption_all.json; found data_captions.json (the layout of dataset 'rstpreid')")


def _caption_all(ids: list[int]) -> list[dict]:
    """Records as the CUHK-PEDES download's caption_all.json writes them: no 'split'."""
    return [{"id": pid, "file_path": f"CUHK01/{pid:05d}.png", "captions": ["A man in a red coat.", "He wears a coat."]}
            for pid in ids]


def test_caption_all_json_gets_the_standard_split_by_identity(tmp_path):
    """CUHK-PEDES as downloaded: caption_all.json has no 'split'; ids 1-11003 / 11004-12003 /
    12004-13003 are train / val / test, the split reid_raw.json writes out."""
    ids = [1, 2, 11003, 11004, 12003, 12004, 13003]
    (tmp_path / "caption_all.json").write_text(json.dumps(_caption_all(ids)))
    records = read_annotations(tmp_path, "cuhk_pedes")
    assert [r.split for r in records] == ["train", "train", "train", "val", "val", "test", "test"]
    assert annotation_path(tmp_path, "cuhk_pedes") == tmp_path / "caption_all.json"
    # reid_raw.json wins when both are there, and its own 'split' is used as written
    write_dataset(tmp_path, "cuhk_pedes", splits={"train": 1, "val": 1, "test": 1})
    assert annotation_path(tmp_path, "cuhk_pedes") == tmp_path / "reid_raw.json"
    assert [r.split for r in read_annotations(tmp_path, "cuhk_pedes")] == ["train"] * 2 + ["val"] * 2 + ["test"] * 2


def test_caption_all_json_id_outside_the_standard_split_is_one_line(tmp_path):
    (tmp_path / "caption_all.json").write_text(json.dumps(_caption_all([5, 13004])))
    with pytest.raises(DataError) as info:
        read_annotations(tmp_path, "cuhk_pedes")
    assert str(info.value) == (
        f"{tmp_path / 'caption_all.json'}: record 1 (CUHK01/13004.png): no 'split', and id 13004 is outside the "
        "standard split's ids 1-13003; add a 'split' field (train / val / test) to every record")


def test_a_split_field_is_required_where_the_dataset_has_no_standard_split(tmp_path):
    message = _bad(tmp_path, _drop(0, "split"), dataset="rstpreid")
    assert "data_captions.json: record 0 (train/0001_0.jpg): missing 'split'" in message


def test_caption_all_json_trains_end_to_end_through_the_tables(tmp_path):
    """The training pipeline (tables, tokenizer, loader) reads caption_all.json like reid_raw.json."""
    from reid.data.tables import build_tables
    from reid.data.tokenizer import build_tokenizer

    ids = list(range(1, 9)) + list(range(11004, 11008)) + list(range(12004, 12008))
    records = [{"id": pid, "file_path": f"p{pid}_{v}.jpg", "captions": [CAPTIONS[(pid + v) % len(CAPTIONS)]] * 2}
               for pid in ids for v in range(2)]
    root = tmp_path / "CUHK-PEDES"
    root.mkdir()
    (root / "caption_all.json").write_text(json.dumps(records))
    for rec in records:
        solid_jpeg(root / "imgs" / rec["file_path"], (200, 30, 30))
    cfg = data_config(root, tmp_path / "cache")
    tables = build_tables(cfg, build_tokenizer(cfg, ""))
    assert tables.num_classes == 8 and len(tables.train) == 32
    assert sorted(set(tables.train["orig_pid"])) == list(range(1, 9))
    assert sorted(set(tables.gallery("test")["pid"])) == list(range(12004, 12008))


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



def test_cli_compares_each_split_with_the_published_counts(tmp_path, capsys, monkeypatch):
    """The published figures are CUHK-PEDES-sized; the comparison is checked against small stand-ins."""
    import reid.data.cli as cli

    write_dataset(tmp_path, "rstpreid", splits={"train": 3, "val": 1, "test": 2})
    monkeypatch.setitem(cli.PUBLISHED, "rstpreid", {"train": (3, 6, 12), "val": (1, 2, 4), "test": (200, 1000, 2000)})
    assert main(["--data-root", str(tmp_path), "--dataset", "rstpreid"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("  matches") and lines[3].endswith("  matches")
    assert lines[4].endswith("  differs (200 / 1000 / 2000)")
    assert main(["--data-root", str(tmp_path), "--dataset", "rstpreid", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["train"]["matches_published"] and not report["splits"]["test"]["matches_published"]
    assert report["splits"]["test"]["published"] == {"identities": 200, "images": 1000, "captions": 2000}


def test_a_caption_all_json_root_is_a_labelled_search_gallery(tmp_path):
    """reid-search recognises CUHK-PEDES as downloaded (caption_all.json) as a dataset gallery."""
    from reid.config import DataConfig
    from reid.search import resolve_gallery

    records = _caption_all([1, 12004, 12005])
    (tmp_path / "caption_all.json").write_text(json.dumps(records))
    for rec in records:
        solid_jpeg(tmp_path / "imgs" / rec["file_path"], (200, 30, 30))
    gallery = resolve_gallery(str(tmp_path), DataConfig(), "test")
    assert gallery.pids == [12004, 12005] and len(gallery.paths) == 2
