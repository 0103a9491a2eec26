"""Arrow tables: columns, cache hits and keys, atomic writes, tokenizer sources, dataset root."""

from __future__ import annotations

import os
import sys
import types

import datasets
import pytest

from reid.data.cache import prepare_root, write_atomically
from reid.data.tables import build_tables
from reid.data.tokenizer import build_tokenizer, build_word_tokenizer, tokenizer_fingerprint
from reid.errors import DataError, MissingWeightsError
from tests.data_fixtures import CAPTIONS, data_config, make_records, write_dataset


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "data"
    records = write_dataset(root, splits={"train": 4, "val": 2, "test": 2})
    cfg = data_config(root, tmp_path / "cache")
    tokenizer = build_tokenizer(cfg, "")
    return cfg, tokenizer, records


def test_train_columns(env):
    cfg, tokenizer, records = env
    tables = build_tables(cfg, tokenizer)
    train = tables.train
    train_records = [r for r in records if r["split"] == "train"]
    assert len(train) == sum(len(r["captions"]) for r in train_records)
    assert tables.num_classes == 4 and sorted(set(train["pid"])) == [0, 1, 2, 3]
    assert sorted(set(train["orig_pid"])) == [1, 2, 3, 4]
    row = train[0]
    assert row["file_path"] == "train/0001_0.jpg" and os.path.isabs(row["image_path"])
    assert row["id_caption"] == "The man has short black hair."
    assert row["cloth_input_ids"] == tokenizer(row["cloth_caption"])["input_ids"]
    assert row["id_input_ids"] == tokenizer(row["id_caption"])["input_ids"]
    no_cloth = train.filter(lambda r: r["caption"] == CAPTIONS[4])
    assert len(no_cloth) > 0 and not any(no_cloth["cloth_valid"]) and set(no_cloth["cloth_caption"]) == {""}
    assert all(len(ids) <= cfg.text_max_length for ids in train["input_ids"])
    assert max(len(ids) for ids in train["input_ids"]) == cfg.text_max_length  # long captions truncated


def test_eval_tables(env):
    cfg, tokenizer, records = env
    tables = build_tables(cfg, tokenizer)
    val = [r for r in records if r["split"] == "val"]
    gallery, queries = tables.gallery("val"), tables.queries("val")
    assert gallery["file_path"] == [r["file_path"] for r in val]
    assert gallery["pid"] == [r["id"] for r in val]  # original ids: queries and gallery agree
    assert queries["caption"] == [c for r in val for c in r["captions"]]
    assert queries["id_input_ids"][0] == tokenizer(queries["id_caption"][0])["input_ids"]


def test_id_text_full_uses_the_whole_caption(env, tmp_path):
    cfg, tokenizer, _ = env
    cfg.id_text = "full"
    train = build_tables(cfg, tokenizer).train
    assert train["id_input_ids"] == train["input_ids"]


def test_record_parts_win_over_the_splitter(tmp_path):
    records = make_records("cuhk_pedes", {"train": 3, "test": 1})
    records[0]["cloth_caption"] = "A red coat."
    records[1]["id_caption"] = ["", "A tall man."]  # empty: falls back to the full caption
    records[2]["cloth_caption"] = ""  # explicitly no clothing part
    write_dataset(tmp_path / "d", records=records)
    cfg = data_config(tmp_path / "d", tmp_path / "c")
    train = build_tables(cfg, build_tokenizer(cfg, "")).train
    assert train["cloth_caption"][:2] == ["A red coat.", "A red coat."]
    assert train["id_caption"][2:4] == [records[1]["captions"][0], "A tall man."]
    assert train["cloth_valid"][4:6] == [False, False]


def test_second_build_is_a_load_without_tokenizing(env, monkeypatch):
    cfg, tokenizer, _ = env
    first = build_tables(cfg, tokenizer)
    assert not first.from_cache

    def no_map(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(datasets.Dataset, "map", no_map)
    second = build_tables(cfg, tokenizer)
    assert second.from_cache and second.path == first.path
    assert second.train["input_ids"] == first.train["input_ids"]


def test_cache_key_follows_settings_and_annotation(env):
    cfg, tokenizer, _ = env
    base = build_tables(cfg, tokenizer).path
    cfg.text_max_length = 16
    assert build_tables(cfg, tokenizer).path != base
    cfg.text_max_length = 32
    cfg.negatives = "hard"
    hard = build_tables(cfg, tokenizer)
    assert hard.path != base and "neg_candidates" in hard.train.column_names
    cfg.negatives = "random"
    ann = os.path.join(cfg.root, "reid_raw.json")
    stat = os.stat(ann)
    os.utime(ann, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert build_tables(cfg, tokenizer).path != base


def test_missing_image_is_found_at_build_time(env):
    cfg, tokenizer, _ = env
    os.remove(os.path.join(cfg.root, "imgs", "test", "0008_1.jpg"))
    with pytest.raises(DataError, match=r"reid_raw.json: record 15 \(test/0008_1.jpg\): image file not found"):
        build_tables(cfg, tokenizer)
    assert not any(p.name.startswith(".") for p in (os.scandir(cfg.cache_dir + "/tables")))  # no tmp left


def test_needs_clothing_text_of_two_identities(tmp_path):
    records = make_records("cuhk_pedes", {"train": 2, "test": 1})
    for rec in records:
        if rec["id"] == 2:
            rec["cloth_caption"] = ""
    write_dataset(tmp_path / "d", records=records)
    cfg = data_config(tmp_path / "d", tmp_path / "c")
    with pytest.raises(DataError, match="fewer than two training identities have a caption with a clothing part"):
        build_tables(cfg, build_tokenizer(cfg, ""))


def test_write_atomically(tmp_path):
    final = tmp_path / "entry"

    def fail(tmp):
        tmp.mkdir()
        (tmp / "half").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(final, fail)
    assert list(tmp_path.iterdir()) == []  # nothing published, temporary directory removed
    write_atomically(final, lambda tmp: (tmp.mkdir(), (tmp / "v").write_text("1")))
    write_atomically(final, lambda tmp: (tmp.mkdir(), (tmp / "v").write_text("2")))  # the first one wins
    assert (final / "v").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["entry"]


# ----------------------------------------------------------------------------------------------
# tokenizer sources and the dataset root
# ----------------------------------------------------------------------------------------------


def test_word_tokenizer_is_cached_and_exportable(tmp_path):
    corpus = ["The man wears a Zebra-print shirt."]
    tok = build_word_tokenizer(corpus, tmp_path / "tok", 32)
    assert tok.is_fast and tok.convert_ids_to_tokens(tok("a zebra shirt")["input_ids"]) == [
        "[CLS]", "a", "zebra", "shirt", "[SEP]"]
    assert tok.convert_ids_to_tokens(tok("qwertyuiop")["input_ids"])[1] == "[UNK]"
    again = build_word_tokenizer(corpus, tmp_path / "tok", 32)
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tok)
    assert len(list((tmp_path / "tok").iterdir())) == 1
    tok.save_pretrained(str(tmp_path / "export"))
    cfg = data_config(tmp_path, tmp_path / "c", tokenizer=str(tmp_path / "export"))
    assert tokenizer_fingerprint(build_tokenizer(cfg, "")) == tokenizer_fingerprint(tok)


def test_missing_tokenizer_directories(tmp_path):
    cfg = data_config(tmp_path, tmp_path / "c")
    with pytest.raises(MissingWeightsError, match=r"nowhere: model.text_encoder.path directory not found"):
        build_tokenizer(cfg, str(tmp_path / "nowhere"))
    cfg.tokenizer = str(tmp_path / "gone")
    with pytest.raises(MissingWeightsError, match=r"gone: data.tokenizer directory not found"):
        build_tokenizer(cfg, "")


def test_prepare_root(tmp_path, monkeypatch):
    cfg = data_config(tmp_path / "absent", tmp_path / "cache")
    with pytest.raises(DataError, match="absent: data.root does not exist"):
        prepare_root(cfg)
    calls = []
    fake = types.ModuleType("reid.data.synth")
    fake.generate = lambda out, num_ids, seed=0, image_size=(128, 64), workers=1: calls.append((out, num_ids, seed, image_size))
    monkeypatch.setitem(sys.modules, "reid.data.synth", fake)
    monkeypatch.setattr(sys.modules["reid.data"], "synth", fake, raising=False)
    cfg.root = ""
    cfg.synthetic.num_ids, cfg.synthetic.seed, cfg.synthetic.image_size = 30, 2, (96, 48)
    root = prepare_root(cfg)
    assert root == (tmp_path / "cache" / "synthetic-n30-s2-96x48").resolve()
    assert calls == [(tmp_path / "cache" / "synthetic-n30-s2-96x48", 30, 2, (96, 48))]
    monkeypatch.setenv("REID_CACHE", str(tmp_path / "env"))
    cfg.cache_dir = ""
    assert prepare_root(cfg).parent == (tmp_path / "env").resolve()
