"""The attribute oracle against a brute-force count, and the factors it reads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from reid.data.synth_text import IDENTITY_FACTS
from reid.errors import DataError
from reid.evaluation import METRICS
from reid.oracle import caption_facts, identity_values, oracle_embeddings, oracle_metrics
from tests.test_evaluation import brute_force


def factors_of(root: Path) -> tuple[dict, list[dict]]:
    return json.loads((root / "synth_factors.json").read_text()), json.loads((root / "reid_raw.json").read_text())


def split_paths(records: list[dict], split: str) -> tuple[list[str], list[str], list[int], list[int]]:
    """Gallery and query paths / pids as reid.data.tables orders them (records, then captions)."""
    part = [r for r in records if r["split"] == split]
    gallery = [r["file_path"] for r in part]
    queries = [r["file_path"] for r in part for _ in r["captions"]]
    return gallery, queries, [r["id"] for r in part], [r["id"] for r in part for _ in r["captions"]]


def test_every_caption_names_the_factors_its_record_says(synth_root: Path) -> None:
    factors, records = factors_of(synth_root)
    for rec in records:
        entry = factors[rec["file_path"]]
        assert len(entry["caption_facts"]) == len(rec["captions"])
        values = identity_values(entry)
        for facts, tokens in zip(entry["caption_facts"], rec["processed_tokens"]):
            assert set(facts) <= set(IDENTITY_FACTS) and {"gender", "hair_style", "hair_colour"} <= set(facts)
            words = set(tokens)
            if "skin" in facts:
                assert "skin" in words
            if "beard" in facts:
                assert values["beard"] == "True" and "beard" in words


def test_the_oracle_score_counts_the_named_factors_that_agree(synth_root: Path) -> None:
    factors, records = factors_of(synth_root)
    gallery, queries, _, _ = split_paths(records, "val")
    q, g = oracle_embeddings(factors, queries, gallery, seed=0)
    facts = caption_facts(factors, queries)
    for i in random.Random(0).sample(range(len(queries)), 10):
        qv = identity_values(factors[queries[i]])
        for j in range(len(gallery)):
            gv = identity_values(factors[gallery[j]])
            count = sum(qv[f] == gv[f] for f in facts[i])
            score = float(q[i] @ g[j])
            assert count <= score < count + 0.5  # the tie-break never outweighs one factor


@pytest.mark.parametrize("protocol", ["standard", "clothing_change"])
def test_oracle_metrics_match_a_brute_force_ranking(synth_root: Path, protocol: str) -> None:
    factors, records = factors_of(synth_root)
    gallery, queries, g_pids, q_pids = split_paths(records, "test")
    groups = {}
    if protocol == "clothing_change":
        groups = dict(query_groups=torch.tensor([factors[p]["outfit_id"] for p in queries]),
                      gallery_groups=torch.tensor([factors[p]["outfit_id"] for p in gallery]))
    ours = oracle_metrics(factors, queries, gallery, torch.tensor(q_pids), torch.tensor(g_pids), draws=3, **groups)
    total = dict.fromkeys(METRICS, 0.0)
    q_groups, g_groups = (groups["query_groups"].tolist(), groups["gallery_groups"].tolist()) if groups else (None, None)
    for seed in range(3):
        q, g = oracle_embeddings(factors, queries, gallery, seed)
        ref = brute_force(q @ g.T, q_pids, g_pids, q_groups, g_groups)
        for name in METRICS:
            total[name] += ref[name] / 3
    for name in METRICS:
        assert ours[name] == pytest.approx(total[name], abs=1e-6), name
    assert ours["R1"] > 50  # the captions identify most people among the split's few


def test_a_dataset_without_caption_facts_is_one_clear_error(synth_root: Path) -> None:
    factors, records = factors_of(synth_root)
    _, queries, _, _ = split_paths(records, "val")
    old = {p: {k: v for k, v in e.items() if k != "caption_facts"} for p, e in factors.items()}
    with pytest.raises(DataError, match="no caption_facts for caption 0 .*generate the dataset again"):
        caption_facts(old, queries)


def test_the_perceived_ranker_scores_the_log_likelihood_of_the_named_facts(synth_root: Path) -> None:
    """perceived_embeddings: q . g = sum over the facts the query names of log p(query value | image),
    counted by hand; a value the probe never saw scores UNSEEN; with certain, correct probabilities
    the ranker is the oracle without its tie-break."""
    from reid.oracle import UNSEEN, perceived_embeddings, perceived_metrics

    factors, records = factors_of(synth_root)
    gallery, queries, g_pids, q_pids = split_paths(records, "test")
    g = torch.Generator().manual_seed(0)
    log_probs = {}
    for name in ("gender", "hair_colour", "beard"):
        classes = sorted({identity_values(factors[p])[name] for p in gallery})
        classes = classes[1:] if name == "hair_colour" else classes  # one value the probe never saw
        log_probs[name] = (classes, torch.log_softmax(torch.randn(len(gallery), len(classes), generator=g), 1))
    q, gal = perceived_embeddings(factors, queries, log_probs)
    facts = caption_facts(factors, queries)
    for i in random.Random(0).sample(range(len(queries)), 10):
        values = identity_values(factors[queries[i]])
        for j in range(len(gallery)):
            expected = 0.0
            for name in facts[i]:
                if name in log_probs:
                    classes, lp = log_probs[name]
                    expected += float(lp[j, classes.index(values[name])]) if values[name] in classes else UNSEEN
            assert float(q[i] @ gal[j]) == pytest.approx(expected, abs=1e-9)

    names = list(IDENTITY_FACTS)
    certain = {}
    for name in names:
        classes = sorted({identity_values(factors[p])[name] for p in gallery})
        truth = torch.tensor([classes.index(identity_values(factors[p])[name]) for p in gallery])
        certain[name] = (classes, torch.where(torch.nn.functional.one_hot(truth, len(classes)).bool(), 0.0, -5.0))
    ours = perceived_metrics(factors, queries, certain, torch.tensor(q_pids), torch.tensor(g_pids))
    oracle = oracle_metrics(factors, queries, gallery, torch.tensor(q_pids), torch.tensor(g_pids), draws=10)
    assert abs(ours["R1"] - oracle["R1"]) < 10  # the same ranking up to how ties fall
    assert ours["mAP"] == pytest.approx(oracle["mAP"], abs=5)


def test_a_known_fact_is_a_certain_probe_of_the_gallerys_own_values() -> None:
    from reid.oracle import UNSEEN, known_log_probs

    factors = {f"{i}.jpg": {"identity": {"gender": g, "age": "young", "height": 0.9, "build": 1.0, "skin_tone": 0.1,
                                         "hair_style": "short", "hair_colour": "black", "beard": False}}
               for i, g in enumerate(("woman", "man", "woman"))}
    classes, log_probs = known_log_probs(factors, ["0.jpg", "1.jpg", "2.jpg"], "gender")
    assert classes == ["man", "woman"]
    assert log_probs.tolist() == [[UNSEEN, 0.0], [0.0, UNSEEN], [UNSEEN, 0.0]]
