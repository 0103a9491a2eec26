"""Training / evaluation loaders: batch keys, dynamic padding, workers, processes, bad images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reid.data import keys
from reid.data.captions import split_caption
from reid.data.loader import TrainCollate, build_eval_data, build_train_data
from reid.data.tokenizer import build_tokenizer
from reid.errors import ConfigError, DataError
from tests.data_fixtures import data_config, make_records, write_dataset

TRAIN_KEYS = {
    keys.IMAGES, keys.PIDS, keys.INDEX, keys.CLOTH_VALID, keys.BAD_IMAGES,
    keys.ID_INPUT_IDS, keys.ID_ATTENTION_MASK, keys.CLOTH_INPUT_IDS, keys.CLOTH_ATTENTION_MASK,
    keys.NEG_CLOTH_INPUT_IDS, keys.NEG_CLOTH_ATTENTION_MASK,
}


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, splits={"train": 6, "val": 2, "test": 2})
    cfg = data_config(root, tmp_path / "cache")
    return cfg, build_tokenizer(cfg, "")


def _batches(data, epoch=0):
    data.sampler.set_epoch(epoch)
    return list(data.loader)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_collate_pads_each_field_to_its_own_longest():
    samples = [
        {keys.IMAGES: torch.zeros(3, 4, 2), keys.PIDS: 0, keys.CLOTH_VALID: True, keys.INDEX: 5, keys.BAD_IMAGES: 1,
         keys.ID_INPUT_IDS: [2, 7, 3], keys.CLOTH_INPUT_IDS: [2, 8, 9, 9, 3], keys.NEG_CLOTH_INPUT_IDS: [2, 3]},
        {keys.IMAGES: torch.ones(3, 4, 2), keys.PIDS: 4, keys.CLOTH_VALID: False, keys.INDEX: 1, keys.BAD_IMAGES: 0,
         keys.ID_INPUT_IDS: [2, 7, 7, 7, 7, 3], keys.CLOTH_INPUT_IDS: [2, 3], keys.NEG_CLOTH_INPUT_IDS: [2, 5, 3]},
    ]
    batch = TrainCollate(pad_id=0)(samples)
    assert set(batch) == TRAIN_KEYS
    assert batch[keys.IMAGES].shape == (2, 3, 4, 2)
    assert batch[keys.ID_INPUT_IDS].tolist() == [[2, 7, 3, 0, 0, 0], [2, 7, 7, 7, 7, 3]]
    assert batch[keys.ID_ATTENTION_MASK].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert batch[keys.CLOTH_INPUT_IDS].shape == (2, 5) and batch[keys.CLOTH_ATTENTION_MASK][1].tolist() == [1, 1, 0, 0, 0]
    assert batch[keys.NEG_CLOTH_INPUT_IDS].tolist() == [[2, 3, 0], [2, 5, 3]]
    assert batch[keys.CLOTH_VALID].dtype == torch.bool and batch[keys.CLOTH_VALID].tolist() == [True, False]
    assert batch[keys.BAD_IMAGES].shape == () and int(batch[keys.BAD_IMAGES]) == 1
    assert all(batch[k].dtype == torch.int64 for k in TRAIN_KEYS - {keys.IMAGES, keys.CLOTH_VALID})


def test_train_batches(env):
    cfg, tokenizer = env
    data = build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=0)
    batches = _batches(data)
    assert len(batches) == len(data.sampler) > 0 and data.num_classes == 6
    table = data.table
    for batch in batches:
        assert set(batch) == TRAIN_KEYS and batch[keys.IMAGES].shape == (4, 3, 32, 16)
        rows = batch[keys.INDEX].tolist()
        assert batch[keys.PIDS].tolist() == [table[r]["pid"] for r in rows]
        for field in keys.TEXT_FIELDS[:2]:
            ids = batch[f"{field}_input_ids"]
            assert ids.shape[1] == max(len(table[r][f"{field}_input_ids"]) for r in rows)
        assert int(batch[keys.BAD_IMAGES]) == 0


def test_two_workers_give_the_same_batches_as_none(env):
    cfg, tokenizer = env
    serial = build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=3)
    cfg.num_workers = 2
    parallel = build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=3)
    for epoch in (0, 1):
        a, b = _batches(serial, epoch), _batches(parallel, epoch)
        assert len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))


def test_two_processes_see_what_one_process_sees(env):
    cfg, tokenizer = env
    cfg.batch_size = 8
    whole = _batches(build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=1), epoch=2)
    cfg.batch_size = 4
    halves = [_batches(build_train_data(cfg, tokenizer, rank=r, world_size=2, seed=1), epoch=2) for r in (0, 1)]
    for b, batch in enumerate(whole):
        for key in (keys.IMAGES, keys.INDEX, keys.PIDS):  # same rows, same augmentation
            assert torch.equal(batch[key], torch.cat([halves[0][b][key], halves[1][b][key]]))
        neg = batch[keys.NEG_CLOTH_INPUT_IDS]
        for r in (0, 1):  # same negatives, up to padding
            part = halves[r][b][keys.NEG_CLOTH_INPUT_IDS]
            assert torch.equal(neg[4 * r : 4 * r + 4, : part.shape[1]], part)


def test_negatives_come_from_other_identities(tmp_path):
    records = make_records("cuhk_pedes", {"train": 6, "test": 1})
    colours = ["red", "blue", "green", "black", "white", "grey", "pink"]
    for rec in records:  # one clothing text per identity, so a text names its identity
        rec["cloth_caption"] = f"A {colours[rec['id'] - 1]} coat and {colours[-rec['id']]} shoes."
    write_dataset(tmp_path / "d", records=records)
    cfg = data_config(tmp_path / "d", tmp_path / "c")
    tokenizer = build_tokenizer(cfg, "")
    for negatives in ("random", "hard"):
        cfg.negatives = negatives
        data = build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=0)
        owner = {tuple(ids): pid for ids, pid in zip(data.table["cloth_input_ids"], data.table["pid"])}
        assert len(owner) == 6
        for epoch in (0, 1):
            for batch in _batches(data, epoch):
                mask = batch[keys.NEG_CLOTH_ATTENTION_MASK].bool()
                for pid, ids, m in zip(batch[keys.PIDS].tolist(), batch[keys.NEG_CLOTH_INPUT_IDS], mask):
                    assert owner[tuple(ids[m].tolist())] != pid


def test_unreadable_training_image_is_replaced_and_counted(env):
    cfg, tokenizer = env
    clean = _batches(build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=0))
    (Path(cfg.root) / "imgs" / "train" / "0002_0.jpg").write_bytes(b"broken")
    data = build_train_data(cfg, tokenizer, rank=0, world_size=1, seed=0)
    broken = {r for r in range(len(data.table)) if data.table[r]["file_path"] == "train/0002_0.jpg"}
    assert len(broken) == 2  # two captions: two consecutive rows share the image
    replaced = 0
    for before, after in zip(clean, _batches(data)):
        skipped = 0
        for r_before, r_after in zip(before[keys.INDEX].tolist(), after[keys.INDEX].tolist()):
            expected = r_before
            while expected in broken:  # the next row whose image decodes
                expected += 1
            assert r_after == expected
            skipped += expected - r_before
        assert int(after[keys.BAD_IMAGES]) == skipped
        replaced += skipped
    assert replaced > 0


def test_eval_loaders(env):
    cfg, tokenizer = env
    data = build_eval_data(cfg, tokenizer, "test", batch_size=3, rank=0, world_size=1)
    gallery = list(data.gallery_loader)
    assert sum(len(b[keys.PIDS]) for b in gallery) == len(data.gallery) == 4
    assert set(gallery[0]) == {keys.IMAGES, keys.PIDS, keys.INDEX} and gallery[0][keys.IMAGES].shape == (3, 3, 32, 16)
    queries = list(data.query_loader)
    texts = {keys.INPUT_IDS: "input_ids", keys.ID_INPUT_IDS: "id_input_ids", keys.CLOTH_INPUT_IDS: "cloth_input_ids"}
    masks = {keys.ATTENTION_MASK, keys.ID_ATTENTION_MASK, keys.CLOTH_ATTENTION_MASK}
    assert set(queries[0]) == {*texts, *masks, keys.CLOTH_VALID, keys.PIDS, keys.INDEX}
    for key, column in texts.items():  # each text padded on its own, row 0 is the table's row 0
        assert queries[0][key][0, : len(data.queries[0][column])].tolist() == data.queries[0][column]
    assert queries[0][keys.CLOTH_VALID].tolist() == list(data.queries["cloth_valid"][:3])
    first = data.queries[0]
    assert split_caption(first["caption"]) == (first["id_caption"], first["cloth_caption"])
    assert first["cloth_valid"] == bool(first["cloth_caption"])


def test_eval_shards_over_two_processes(env):
    cfg, tokenizer = env
    shards = [build_eval_data(cfg, tokenizer, "val", batch_size=2, rank=r, world_size=2) for r in (0, 1)]
    gathered = [i for s in shards for b in s.gallery_loader for i in b[keys.INDEX].tolist()]
    assert gathered[: len(shards[0].gallery)] == list(range(len(shards[0].gallery)))


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_gallery_image_is_a_one_line_data_error(env, workers):
    cfg, tokenizer = env
    cfg.num_workers = workers
    (Path(cfg.root) / "imgs" / "val" / "0008_1.jpg").write_bytes(b"broken")
    data = build_eval_data(cfg, tokenizer, "val", batch_size=2)
    with pytest.raises(DataError) as info:
        list(data.gallery_loader)
    assert "val/0008_1.jpg: unreadable gallery image" in str(info.value) and "\n" not in str(info.value)


def test_icfg_has_no_val(tmp_path):
    write_dataset(tmp_path / "icfg", "icfg_pedes", splits={"train": 3, "test": 2})
    cfg = data_config(tmp_path / "icfg", tmp_path / "cache", dataset="icfg_pedes")
    with pytest.raises(DataError, match=r"has no evaluation split 'val' \(it has train, test\); set eval.split=test"):
        build_eval_data(cfg, build_tokenizer(cfg, ""), "val", batch_size=4)


def test_segment_dropout_keeps_at_least_one_segment_and_is_reproducible(env):
    import numpy as np

    from reid.data.loader import SegmentDropout

    _, tokenizer = env
    drop = SegmentDropout(tokenizer, 0.5, 32)
    text = "This young man is tall and plump. He has short brown hair and pale skin."
    full = tokenizer(text)["input_ids"]
    seen = set()
    for seed in range(40):
        ids = drop(text, np.random.default_rng(seed))
        assert ids == drop(text, np.random.default_rng(seed))  # same seed, same draw
        if ids is None:
            continue  # nothing dropped: the cached ids stand
        words = tokenizer.decode(ids, skip_special_tokens=True).split()
        assert 0 < len(words) < len(tokenizer.decode(full, skip_special_tokens=True).split())
        seen.add(tuple(ids))
    assert len(seen) > 5
    assert SegmentDropout(tokenizer, 0.99, 32)("One segment only", np.random.default_rng(0)) is None


def test_segment_dropout_needs_the_identity_text(env):
    cfg, tokenizer = env
    cfg.id_segment_drop, cfg.id_text = 0.3, "full"
    with pytest.raises(ConfigError, match="data.id_segment_drop: .*data.id_text=id"):
        build_train_data(cfg, tokenizer)
    cfg.id_text = "id"
    data = build_train_data(cfg, tokenizer)
    assert data.dataset.id_dropout is not None and len(_batches(data)) == len(data.sampler)
