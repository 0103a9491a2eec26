"""Typed config: YAML + dotted overrides, unknown keys and bad values name their dotted path."""

from pathlib import Path

import pytest

from reid.config import Config, load_config, save_config
from reid.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_yaml_and_override_precedence(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optim: {lr: 2.0e-5}\nmodel: {fusion: {num_heads: 8}}\n")
    cfg = load_config(path, ["optim.lr=3e-4", "data.image_size=[384, 128]"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # CLI beats YAML
    assert cfg.model.fusion.num_heads == 8  # YAML beats defaults
    assert cfg.data.image_size == (384, 128)
    assert cfg.optim.head_lr == Config().optim.head_lr  # default kept


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.fusion.num_head=3", "model.fusion.num_head: unknown key (did you mean 'num_heads'?)"),
        ("disentangle.loss_weights.decoupel=1", "disentangle.loss_weights.decoupel: unknown key (did you mean 'decouple'?)"),
        ("data.batch_size=abc", "data.batch_size: expected an integer"),
        ("data.sampler=pk", "data.sampler: 'pk' is not one of 'random', 'identity'"),
        ("optim.lr=-1", "optim.lr: must be > 0"),
        ("model.fusion.num_heads=3", "model.fusion.num_heads: must divide dim (256)"),
        ("train.progress=maybe", "train.progress: expected true or false"),
        ("data.image_size=[224]", "data.image_size: expected a list of 2 values"),
        ("disentangle.loss_weights.cls=-0.5", "disentangle.loss_weights.cls: must be >= 0"),
        ("data.batch_size=30", "data.batch_size: must be a multiple of data.num_instances (4)"),
        ("nonsense", "expected dotted.key=value"),
    ],
)
def test_bad_overrides_name_their_path(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_unknown_yaml_key_names_file_and_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: 3\n  epoch: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.epoch: unknown key (did you mean 'epochs'?)" in str(err.value)
    assert str(path) in str(err.value)


def test_not_a_mapping_and_missing_file(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "configs" / "cuhk_pedes.yaml", ["optim.warmup_steps=7"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg


@pytest.mark.parametrize("name", ["synthetic", "cuhk_pedes"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.model.embed_dim == 256


def test_seed_settings_in_cuhk_config():
    cfg = load_config(REPO / "configs" / "cuhk_pedes.yaml")
    assert (cfg.model.fusion.type, cfg.model.fusion.dim, cfg.model.fusion.num_heads) == ("attention_gated", 256, 4)
    assert (cfg.model.fusion.output_dim, cfg.model.fusion.dropout) == (256, 0.1)
    assert cfg.disentangle.loss_weights.cloth_match == 0.5 and cfg.disentangle.loss_weights.decouple == 0.3
    assert cfg.data.text_max_length == 100
    # min(1, 0.1 + 0.02 x seed epoch), a seed epoch being two of ours (each row seen twice there)
    assert [cfg.disentangle.alpha.at(e) for e in (0, 10, 20, 100)] == pytest.approx([0.1, 0.2, 0.3, 1.0])


def test_docs_config_md_is_generated_from_the_schema():
    from reid.config_doc import render

    assert (REPO / "docs" / "config.md").read_text() == render(), "run: python -m reid.config_doc > docs/config.md"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    load_config(path)


def test_the_clothing_change_benchmark_config_is_what_docs_ablation_md_measures() -> None:
    cfg = load_config(REPO / "configs" / "synthetic_cc.yaml")
    assert cfg.data.root == "" and cfg.data.synthetic.num_ids == 1000  # 150 test people: R1's SE <= 1.5
    assert cfg.data.id_text == "id" and cfg.eval.select == "clothing_change/clothing_invariant/R1"
    assert cfg.disentangle.loss_weights.id_adv == 0 and cfg.disentangle.info_nce.same_person == "exclude"


def test_a_retired_key_is_dropped_with_one_warning(tmp_path: Path, capsys) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("eval:\n  query: id\n  batch_size: 7\n")
    cfg = load_config(old)
    assert cfg.eval.batch_size == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: eval.query is no longer a setting and is ignored")


def test_eval_rerank_topk_is_retired_and_says_why(capsys) -> None:
    cfg = load_config(None, ["eval.rerank_topk=10"])
    assert not hasattr(cfg.eval, "rerank_topk")
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: eval.rerank_topk is no longer a setting and is ignored")
    assert "lowered R1" in err[0]
    with pytest.raises(ConfigError, match="eval.select"):  # the re-ranked rows are gone too
        load_config(None, ["eval.select=standard/clothing_invariant+rerank/R1"])


def test_the_seed_config_is_the_seed_literally():
    """configs/cuhk_pedes_seed.yaml: every value the seed fixes, in the seed's forms."""
    cfg = load_config(REPO / "configs" / "cuhk_pedes_seed.yaml")
    d = cfg.disentangle
    assert (d.grl, d.cloth_match.form, d.decouple.form, d.info_nce.same_person) == ("cloth_branch", "seed", "seed", "negative")
    assert (d.temperature, d.learnable_temperature, d.label_smoothing) == (0.1, False, 0.0)
    w = d.loss_weights
    assert (w.info_nce, w.cls, w.bio, w.cloth_match, w.decouple) == (1.0, 1.0, 1.0, 0.5, 0.3)
    assert (w.fusion_match, w.id_adv, w.id_words) == (0.0, 0.0, 0.0)  # nothing the seed does not have
    assert [d.alpha.at(e) for e in (0, 2, 90)] == pytest.approx([0.1, 0.12, 1.0])  # update_alpha per seed epoch
    m = cfg.model
    assert (m.text_pool, m.cloth_heads, m.shared_dim, m.embed_dim, m.mlp_dropout) == ("cls", "shared", 512, 256, 0.2)
    assert (m.fusion.type, m.fusion.dim, m.fusion.num_heads, m.fusion.output_dim, m.fusion.dropout) == (
        "attention_gated", 256, 4, 256, 0.1)
    assert (cfg.data.image_size, cfg.data.text_max_length, cfg.data.id_text, cfg.data.negatives) == (
        (224, 224), 100, "id", "random")


def test_the_fixed_config_differs_from_the_seed_only_where_it_says_fix():
    """configs/cuhk_pedes.yaml = the seed config with the commented fixes, nothing else."""
    from reid.config import to_dict

    seed = to_dict(load_config(REPO / "configs" / "cuhk_pedes_seed.yaml"))
    fixed = to_dict(load_config(REPO / "configs" / "cuhk_pedes.yaml"))

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(seed), flat(fixed)
    differ = sorted(k for k in a if a[k] != b[k])
    assert differ == ["disentangle.cloth_match.form", "disentangle.decouple.form", "disentangle.grl", "eval.standard",
                      "model.cloth_encoder_grad", "model.cloth_heads", "model.clothing_eraser.rank"]
    text = (REPO / "configs" / "cuhk_pedes.yaml").read_text()
    assert text.count("# fix:") >= 2


def test_the_projection_mlps_are_the_seeds_layer_for_layer():
    """image_mlp / text_mlp: BN(512)-ReLU-Dropout(0.2)-Linear(512, 256)-BN(256)-ReLU-Dropout(0.2)-Linear(256, 256)."""
    from torch import nn

    from reid.model.model import projection_mlp

    mlp = projection_mlp(512, 256, 0.2)
    kinds = [type(layer) for layer in mlp]
    assert kinds == [nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout, nn.Linear]
    assert (mlp[0].num_features, mlp[3].in_features, mlp[3].out_features, mlp[4].num_features) == (512, 512, 256, 256)
    assert (mlp[7].in_features, mlp[7].out_features) == (256, 256) and mlp[2].p == mlp[6].p == 0.2


def test_checks_across_sections_live_in_config_validate():
    with pytest.raises(ConfigError, match="eval.split: 'val': data.dataset 'icfg_pedes' has no such split"):
        load_config(REPO / "configs" / "synthetic.yaml", ["data.dataset=icfg_pedes"])
    icfg = load_config(REPO / "configs" / "synthetic.yaml", ["data.dataset=icfg_pedes", "eval.split=test"])
    assert icfg.warnings()[0].startswith("eval.split=test: the best checkpoint is picked on the test split")
    assert load_config(REPO / "configs" / "synthetic.yaml").warnings() == []
    with pytest.raises(ConfigError, match="fusion_match: > 0 needs a fusion module"):
        load_config(REPO / "configs" / "synthetic.yaml", ["disentangle.loss_weights.fusion_match=0.5", "model.fusion.type=none"])
