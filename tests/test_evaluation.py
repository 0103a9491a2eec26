"""Evaluation: protocol metrics against brute force, the model's retrieval dispatch, probes, the
full split evaluation of an export, and `accelerate launch launch/evaluate.py`."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from reid.config import load_config
from reid.data import build_eval_data, keys
from reid.disentangle_eval import cross_outfit_probe, linear_probe, load_factors, mean_abs_cos, outfit_folds
from reid.encoding import encode_gallery, encode_queries
from reid.data.synth_text import IDENTITY_FACTS
from reid.eval_report import format_report
from reid.evaluation import METRICS, evaluate, evaluate_split, retrieval_metrics, split_truth
from reid.export import load_exported
from reid.metrics import rank_from_embeddings
from reid.model.model import PAIR_IMAGE_EMBEDS, PAIR_TEXT_EMBEDS
from tests.conftest import REPO, run_launch
from tests.export_fixtures import make_export


def brute_force(sim, qp, gp, q_groups=None, g_groups=None) -> dict:
    """Per query, in plain Python: drop the query's group, order, score."""
    sums, valid = dict.fromkeys(METRICS, 0.0), 0
    for i in range(sim.shape[0]):
        allowed = [j for j in range(sim.shape[1]) if q_groups is None or g_groups[j] != q_groups[i]]
        order = sorted(allowed, key=lambda j: (-float(sim[i, j]), j))
        hits = [int(gp[j]) == int(qp[i]) for j in order]
        if not any(hits):
            continue
        valid += 1
        for k in (1, 5, 10):
            sums[f"R{k}"] += any(hits[:k])
        ranks = [r + 1 for r, h in enumerate(hits) if h]
        sums["mAP"] += sum((n + 1) / r for n, r in enumerate(ranks)) / len(ranks)
        sums["mINP"] += len(ranks) / ranks[-1]
    out = {k: 100.0 * v / valid for k, v in sums.items()}
    out["num_skipped"] = sim.shape[0] - valid
    return out


def random_problem(seed: int, num_q: int = 23, num_g: int = 31, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(num_q, dim, generator=g, dtype=torch.float64), dim=1)
    gal = torch.nn.functional.normalize(torch.randn(num_g, dim, generator=g, dtype=torch.float64), dim=1)
    gp = torch.randint(0, 5, (num_g,), generator=g)
    qp = torch.randint(0, 6, (num_q,), generator=g)  # pid 5: never in the gallery (skipped)
    g_groups = gp * 3 + torch.randint(0, 3, (num_g,), generator=g)  # 3 outfits per person
    q_groups = qp * 3 + torch.randint(0, 3, (num_q,), generator=g)
    return q, gal, qp, gp, q_groups, g_groups


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
@pytest.mark.parametrize("grouped", [False, True])
def test_protocol_metrics_match_brute_force(chunk_size: int, grouped: bool) -> None:
    q, gal, qp, gp, q_groups, g_groups = random_problem(seed=chunk_size + 10 * grouped)
    groups = dict(query_groups=q_groups, gallery_groups=g_groups) if grouped else {}
    ours = retrieval_metrics(q, gal, qp, gp, chunk_size=chunk_size, **groups)
    ref = brute_force(q @ gal.T, qp, gp, q_groups if grouped else None, g_groups if grouped else None)
    assert ours["num_skipped"] == ref["num_skipped"] > 0
    for name in METRICS:
        assert ours[name] == pytest.approx(ref[name], abs=1e-5), name  # metrics.py sums AP in float32


def test_without_a_protocol_it_is_exactly_rank_from_embeddings() -> None:
    q, gal, qp, gp, _, _ = random_problem(seed=3)
    assert retrieval_metrics(q, gal, qp, gp, chunk_size=5) == rank_from_embeddings(q, gal, qp, gp, chunk_size=5)


def test_a_protocol_that_leaves_no_hit_raises() -> None:
    q, gal, qp, gp, _, _ = random_problem(seed=4)
    with pytest.raises(ValueError, match="has a hit left"):  # every gallery item in every query's group
        retrieval_metrics(q, gal, qp, gp, query_groups=torch.zeros(len(q), dtype=torch.long),
                          gallery_groups=torch.zeros(len(gal), dtype=torch.long))


def test_forward_image_dispatch_returns_branch_features_and_pair_dispatch_scores() -> None:
    from tests.test_model import make_batch, tiny, every_term

    model = tiny(every_term()).eval()
    batch = make_batch()
    with torch.no_grad():
        train_out = model(batch)
        images = model({keys.IMAGES: batch[keys.IMAGES]})
        pairs = model({PAIR_IMAGE_EMBEDS: images["image_embeds"], PAIR_TEXT_EMBEDS: train_out["id_text_embeds"]})
        direct = model.match_scores(images["image_embeds"], train_out["id_text_embeds"])
    assert set(images) == {"image_embeds", "id_embeds", "cloth_embeds", "cloth_image_embeds"}
    for name in images:
        torch.testing.assert_close(images[name], train_out[name])
    torch.testing.assert_close(images["image_embeds"], model.encode_image(batch[keys.IMAGES]))
    assert set(pairs) == {"match_scores"} and pairs["match_scores"].shape == (len(batch[keys.PIDS]),)
    torch.testing.assert_close(pairs["match_scores"], direct)


def test_linear_probe_finds_a_linear_factor_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (400,), generator=g)
    x = torch.randn(400, 16, generator=g)
    x[:, 3] += 6.0 * labels  # the label is linear in one feature (nearest-centre accuracy ~99%)
    found = linear_probe(x[:300], labels[:300].tolist(), x[300:], labels[300:].tolist())
    assert found.accuracy > 95 and found.num_classes == 4 and found.num_test == 100
    noise = linear_probe(torch.randn(300, 16, generator=g), labels[:300].tolist(),
                         torch.randn(100, 16, generator=g), labels[300:].tolist())
    assert noise.accuracy < noise.chance + 15
    assert noise.chance == pytest.approx(100 * torch.bincount(labels[300:]).max().item() / 100)


def test_unseen_test_labels_count_as_errors() -> None:
    x = torch.tensor([[0.0], [1.0], [0.1], [0.9]])
    result = linear_probe(x[:2], ["a", "b"], x[2:], ["a", "c"])
    assert result.accuracy == 50.0 and result.chance == 50.0


def test_the_cross_outfit_probe_scores_every_outfit_unseen() -> None:
    pids, outfits = torch.tensor([1, 1, 1, 2, 2, 3, 2]), torch.tensor([10, 11, 11, 20, 21, 30, 22])
    assert outfit_folds(pids, outfits).tolist() == [0, 1, 1, 0, 1, -1, 2]  # person 3: one outfit
    # The feature says who it is only through the outfit: a probe that crosses outfits cannot use it.
    by_outfit = torch.nn.functional.one_hot(outfits - 10).double()
    assert cross_outfit_probe(by_outfit, pids, outfits).accuracy < 50
    by_person = torch.nn.functional.one_hot(pids).double() + 0.01 * by_outfit[:, :4].sum(1, keepdim=True)
    result = cross_outfit_probe(by_person, pids, outfits)
    assert result.accuracy == 100.0 and result.num_test == 6 and result.num_classes == 3


def test_mean_abs_cos() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])
    assert mean_abs_cos(a, b) == pytest.approx(1 / 3)


# --------------------------------------------------------------------------------------------------
# On a tiny exported model
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(synth_root: Path, tmp_path_factory) -> Path:
    return make_export(synth_root, tmp_path_factory.mktemp("evaluation") / "best")


def test_evaluate_split_reports_every_protocol_and_matches_the_trainer(export: Path) -> None:
    model, tokenizer, cfg, meta = load_exported(export)
    accelerator = Accelerator(cpu=True)
    report = evaluate_split(model, cfg, tokenizer, meta, accelerator, split="val")
    assert report["notes"] == [] and report["standard_form"] == "composed"
    assert set(report["retrieval"]) == {"standard", "clothing_change"}
    modes = {"standard", "clothing_invariant", "oracle"}
    assert all(set(by_mode) == modes for by_mode in report["retrieval"].values())
    probes = report["disentangle"]["probes"]
    assert set(probes) == {f"{source}_to_{target}" for source in ("identity", "id", "cloth")
                           for target in ("upper_colour", "person")}  # identity factors: from 50 people on
    assert all(0 <= p["accuracy"] <= 100 and p["num_test"] > 0 for p in probes.values())
    data = build_eval_data(cfg.data, tokenizer, "val", batch_size=5, pixel_mean=meta["pixel_mean"], pixel_std=meta["pixel_std"])
    truth = split_truth(Path(cfg.data.root), data.gallery, data.queries, [])
    trainer = evaluate(model, data, accelerator, truth=truth, chunk_size=7)
    assert set(trainer) == {f"{p}/{m}/{n}" for p in report["retrieval"] for m in modes for n in METRICS}
    for (protocol, mode), name in itertools.product(itertools.product(report["retrieval"], modes), METRICS):
        assert trainer[f"{protocol}/{mode}/{name}"] == pytest.approx(report["retrieval"][protocol][mode][name], abs=1e-6)
    text = format_report(report)
    assert "clothing-change" in text and "attribute oracle" in text and "cloth_embeds -> person (leakage)" in text
    assert "identity embedding -> upper colour (leakage)" in text
    assert "R1/oracle" in text
    json.dumps(report)  # JSON-able


def test_identity_text_probes_fit_on_train_captions_and_score_the_queries(export: Path, monkeypatch) -> None:
    import reid.disentangle_eval as D

    monkeypatch.setattr(D, "MIN_PEOPLE_FOR_FACTORS", 1)  # the tiny split has too few people for the real threshold
    model, tokenizer, cfg, meta = load_exported(export)
    report = evaluate_split(model, cfg, tokenizer, meta, Accelerator(cpu=True), split="val")
    probes = report["disentangle"]["probes"]
    assert {f"text_to_{t}" for t in D.IDENTITY_PROBES} <= set(probes)
    train_rows = len(D.train_query_loader(cfg.data, tokenizer, Path(cfg.data.root), batch_size=4)[1])
    assert probes["text_to_gender"]["num_train"] == train_rows and probes["text_to_gender"]["num_test"] == report["num_queries"]
    text = format_report(report)
    assert "identity text embedding -> hair colour (reference)" in text
    known = report["disentangle"]["perceived_one_known"]  # computed with the identity-fact probes
    assert known["protocol"] == "clothing_change" and set(known["facts"]) == set(IDENTITY_FACTS)
    assert all(0 <= m["R1"] <= 100 for m in known["facts"].values())
    assert (f"the same ranker with one fact's ground truth in place of its probe, clothing-change R1: "
            f"gender {known['facts']['gender']['R1']:.2f}, age") in text


def test_text_probes_read_what_the_text_embeddings_encode() -> None:
    from reid.disentangle_eval import text_probes

    g = torch.Generator().manual_seed(0)
    factors, paths = {}, []
    for pid in range(40):
        path = f"p{pid}.jpg"
        paths.append(path)
        factors[path] = {"outfit_id": pid, "clothing": {"upper_colour": "red"},
                         "identity": {"gender": ("man", "woman")[pid % 2], "age": "young", "height": 0.9, "build": 1.0,
                                      "skin_tone": 0.1, "hair_style": "short", "hair_colour": ("black", "red")[pid // 2 % 2],
                                      "beard": False}}
    gender = torch.tensor([[pid % 2 == c for c in range(2)] for pid in range(40)]).double()
    feats = torch.cat([gender * 5, torch.randn(40, 5, generator=g, dtype=torch.float64)], 1)  # gender, not hair colour
    results = text_probes(feats[:20], paths[:20], feats[20:], paths[20:], factors)
    assert results["text_to_gender"].accuracy == 100.0
    assert results["text_to_hair_colour"].accuracy < 80  # chance 50: the embeddings do not carry it


def test_the_modes_score_what_they_say_and_clothing_change_removes_the_same_outfit(export: Path, synth_root: Path) -> None:
    model, tokenizer, cfg, meta = load_exported(export)
    report = evaluate_split(model, cfg, tokenizer, meta, Accelerator(cpu=True), split="val", probes=False)
    data = build_eval_data(cfg.data, tokenizer, "val", batch_size=8, pixel_mean=meta["pixel_mean"], pixel_std=meta["pixel_std"])
    factors = load_factors(synth_root)
    with torch.no_grad():
        gallery, gp = encode_gallery(model.eval(), data.gallery_loader, Accelerator(cpu=True), len(data.gallery))
        queries, qp = encode_queries(model, data.query_loader, Accelerator(cpu=True), len(data.queries))
    valid = torch.tensor(list(data.queries["cloth_valid"]))
    assert (queries["cloth"][~valid] == 0).all() and (queries["cloth"][valid].norm(dim=1) > 0.99).all()
    composed = queries["id"] @ gallery["image_embeds"].T + queries["cloth"] @ gallery["cloth_image_embeds"].T
    invariant = queries["id"] @ gallery["image_embeds"].T
    g_out = [factors[p]["outfit_id"] for p in data.gallery["file_path"]]
    q_out = [factors[p]["outfit_id"] for p in data.queries["file_path"]]
    for mode, sim in (("standard", composed), ("clothing_invariant", invariant)):
        for protocol, groups in (("standard", (None, None)), ("clothing_change", (q_out, g_out))):
            ref = brute_force(sim, qp, gp, *groups)
            for name in METRICS:
                assert report["retrieval"][protocol][mode][name] == pytest.approx(ref[name], abs=1e-5), (protocol, mode)


def test_a_dataset_without_factors_reports_the_protocol_as_unavailable(export: Path, synth_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "plain"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("synth_factors.json"))
    model, tokenizer, _, meta = load_exported(export)
    cfg = load_config(export / "config.yaml", [f"data.root={root}"])
    report = evaluate_split(model, cfg, tokenizer, meta, Accelerator(cpu=True), split="val")
    assert set(report["retrieval"]) == {"standard"} and "probes" not in report["disentangle"]
    assert set(report["retrieval"]["standard"]) == {"standard", "clothing_invariant"}
    assert any("clothing-change protocol, oracle and probes: not available" in n for n in report["notes"])
    assert "note: clothing-change" in format_report(report)


def _evaluate_main():
    spec = importlib.util.spec_from_file_location("launch_evaluate", REPO / "launch" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_evaluate_cli_rejects_a_directory_that_is_not_an_export(tmp_path: Path, capsys) -> None:
    assert _evaluate_main()(["--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an exported reid model" in err[0]


@pytest.mark.slow
def test_launch_evaluate_counts_each_sample_once_on_two_processes(export: Path, tmp_path: Path) -> None:
    outs = {}
    for name, config in (("one", None), ("two", "cpu_ddp")):
        outs[name] = tmp_path / f"{name}.json"
        proc = run_launch(["launch/evaluate.py", "--checkpoint", str(export), "--split", "val",
                           "--json", str(outs[name])], accel_config=config, timeout=300)
        assert "clothing-change" in proc.stdout and "linear probe" in proc.stdout
    one, two = (json.loads(outs[n].read_text()) for n in ("one", "two"))
    assert two["num_processes"] == 2 and one["num_gallery"] == two["num_gallery"]
    for protocol in ("standard", "clothing_change"):
        for mode in ("standard", "clothing_invariant", "oracle"):
            for name in METRICS:
                assert one["retrieval"][protocol][mode][name] == pytest.approx(two["retrieval"][protocol][mode][name], abs=1e-4)


def test_identity_factors_are_probed_where_there_are_enough_people() -> None:
    from reid.disentangle_eval import IDENTITY_PROBES, leakage_probes

    g = torch.Generator().manual_seed(0)
    people, per = 60, 4
    factors, paths = {}, []
    for pid in range(2 * people):  # train people 0..59, evaluated people 60..119
        hair = ("black", "red", "blonde")[pid % 3]
        for view in range(per):
            path = f"p{pid}_{view}.jpg"
            paths.append(path)
            factors[path] = {"outfit_id": 2 * pid + view % 2, "clothing": {"upper_colour": ("red", "blue")[view % 2]},
                             "identity": {"gender": "man", "age": "young", "height": 0.9, "build": 1.0, "skin_tone": 0.1,
                                          "hair_style": "short", "hair_colour": hair, "beard": False}}
    hair_code = torch.tensor([[pid % 3 == c for c in range(3)] for pid in range(2 * people) for _ in range(per)]).double()
    feats = torch.cat([hair_code * 5, torch.randn(len(paths), 5, generator=g, dtype=torch.float64)], 1)
    split = people * per
    train = {"image_embeds": feats[:split], "id_embeds": feats[:split]}
    evaluated = {"image_embeds": feats[split:], "id_embeds": feats[split:]}
    pids = torch.arange(people, 2 * people).repeat_interleave(per)
    results = leakage_probes(train, paths[:split], evaluated, paths[split:], pids, factors)
    assert {f"identity_to_{t}" for t in IDENTITY_PROBES} <= set(results)
    assert results["identity_to_hair_colour"].accuracy == 100.0  # the features encode hair colour
    assert results["identity_to_upper_colour"].accuracy < 75  # and not the clothes (chance 50)
    assert not any(name.startswith("cloth_") for name in results)  # no cloth branch features given


GENDERS, COLOURS, STYLES = ("man", "woman"), ("black", "red", "blonde", "brown"), ("short", "long", "bun", "bald", "ponytail")


def _described_people() -> tuple[dict[str, dict], list[str]]:
    """80 people (40 train, 40 evaluated), 2 outfits x 2 views, each caption naming gender, hair
    colour and hair style: 40 distinct descriptions, so each evaluated person is unique."""
    factors, paths = {}, []
    for pid in range(80):
        ident = {"gender": GENDERS[pid % 2], "age": "young", "height": 0.9, "build": 1.0, "skin_tone": 0.1,
                 "hair_style": STYLES[pid // 8 % 5], "hair_colour": COLOURS[pid // 2 % 4], "beard": False}
        for view in range(4):
            path = f"p{pid}_{view}.jpg"
            paths.append(path)
            factors[path] = {"id": pid, "outfit_id": 2 * pid + view // 2, "clothing": {"upper_colour": "red"},
                             "identity": ident, "caption_facts": [["gender", "hair_colour", "hair_style"]]}
    return factors, paths


def test_the_perceived_ranker_reads_what_the_features_perceive() -> None:
    """perceived_ranker fits one probe per identity fact on train features: features that encode
    every fact rank as well as the oracle does; features that encode none rank at chance."""
    from reid.disentangle_eval import perceived_log_probs, perceived_ranker
    from reid.oracle import identity_values, oracle_metrics

    g = torch.Generator().manual_seed(0)
    factors, paths = _described_people()
    facts = [identity_values(factors[p]) for p in paths]
    code = torch.tensor([[f["gender"] == GENDERS[0]] + [f["hair_colour"] == c for c in COLOURS]
                         + [f["hair_style"] == s for s in STYLES] for f in facts]).double()
    noise = torch.randn(len(paths), 4, generator=g, dtype=torch.float64)
    split = 160
    pids = torch.tensor([factors[p]["id"] for p in paths[split:]])
    groups = torch.tensor([factors[p]["outfit_id"] for p in paths[split:]])
    protocols = {"standard": (None, None), "clothing_change": (groups, groups)}
    oracle = oracle_metrics(factors, paths[split:], paths[split:], pids, pids, query_groups=groups, gallery_groups=groups)
    seeing, blind = (perceived_ranker(perceived_log_probs(x[:split], paths[:split], x[split:], factors), paths[split:],
                                      paths[split:], pids, pids, factors, protocols)
                     for x in (torch.cat([code * 5, noise], 1), noise))
    assert set(seeing) == {"standard", "clothing_change"}
    assert oracle["R1"] == 100.0 and seeing["clothing_change"]["R1"] == 100.0
    assert seeing["clothing_change"]["mAP"] == pytest.approx(oracle["mAP"], abs=1e-6)
    assert blind["clothing_change"]["R1"] < 25  # chance 1 in 40 people


def test_one_fact_known_says_which_facts_perception_costs_the_ranker() -> None:
    """one_fact_known: features that perceive gender and hair colour but not hair style leave the
    ranker guessing among the 5 people who share those two; the ground truth of hair style in place
    of its probe makes it exact, that of gender changes nothing (it is perceived already)."""
    from reid.disentangle_eval import one_fact_known, perceived_log_probs, perceived_ranker
    from reid.oracle import identity_values

    g = torch.Generator().manual_seed(1)
    factors, paths = _described_people()
    facts = [identity_values(factors[p]) for p in paths]
    code = torch.tensor([[f["gender"] == GENDERS[0]] + [f["hair_colour"] == c for c in COLOURS] for f in facts]).double()
    x = torch.cat([code * 5, torch.randn(len(paths), 4, generator=g, dtype=torch.float64)], 1)  # no hair style
    split = 160
    pids = torch.tensor([factors[p]["id"] for p in paths[split:]])
    groups = torch.tensor([factors[p]["outfit_id"] for p in paths[split:]])
    log_probs = perceived_log_probs(x[:split], paths[:split], x[split:], factors)
    perceived = perceived_ranker(log_probs, paths[split:], paths[split:], pids, pids, factors,
                                 {"clothing_change": (groups, groups)})["clothing_change"]["R1"]
    known = one_fact_known(log_probs, paths[split:], paths[split:], pids, pids, factors, (groups, groups))
    assert set(known) == {"gender", "age", "height", "build", "skin", "hair_style", "hair_colour", "beard"}
    assert perceived < 60  # 1 in 5 by chance among the people who share gender and hair colour
    assert known["hair_style"]["R1"] == 100.0
    assert known["gender"]["R1"] == pytest.approx(perceived, abs=2.5)  # one query in 40
