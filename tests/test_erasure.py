"""The clothing eraser (reid/erasure.py): LEACE against hand-computed cases, the clothing words, the
residual on identity text, where the model applies it, and the trainer / launch/erase_clothing.py
fitting it (1 and 2 processes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from reid.data import keys
from reid.erasure import ClothingEraser, clothing_words, fit_clothing_eraser, leace, residual
from reid.export import load_exported, load_state_dict
from reid.retrieval import gallery_rows, mode_embeddings
from tests.conftest import REPO, run_launch
from tests.export_fixtures import make_export


def _cov(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - a.mean(0)).T @ (b - b.mean(0)) / len(a)


def test_leace_on_a_hand_case_erases_the_clothing_coordinate_and_keeps_the_other() -> None:
    # x1 is the clothing (= z), x2 is uncorrelated with it: the eraser sets x1 to its mean, keeps x2.
    z = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    x = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]) + torch.tensor([2.0, 3.0])
    mean, matrix, used = leace(x, z, rank=4)
    assert used == 1
    erased = x.double() - (x.double() - mean) @ matrix.T
    assert torch.allclose(erased, torch.tensor([[2.0, 4.0], [2.0, 4.0], [2.0, 2.0], [2.0, 2.0]], dtype=torch.float64))


def test_leace_at_full_rank_leaves_no_covariance_and_truncated_takes_the_strongest_first() -> None:
    g = torch.Generator().manual_seed(0)
    cols = torch.randn(2000, 6, generator=g, dtype=torch.float64)
    cols = torch.linalg.qr(cols - cols.mean(0))[0] * 2000 ** 0.5  # centred, uncorrelated in the sample
    z, noise, free = cols[:, :2], cols[:, 2:3], cols[:, 3:]  # free: what the eraser must keep
    x = torch.cat([3 * z[:, :1], 0.3 * z[:, 1:] + 0.1 * noise, free], 1)
    x = x @ torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]  # mixed coordinates
    for rank, gone, kept in ((2, (0, 1), ()), (1, (0,), (1,))):
        mean, matrix, used = leace(x, z, rank)
        erased = x - (x - mean) @ matrix.T
        cov = _cov(erased, z)
        assert used == rank
        for j in gone:
            assert cov[:, j].abs().max() < 1e-10
        for j in kept:
            assert cov[:, j].abs().max() > 0.05
        # uncorrelated with the clothing: that part of x survives exactly
        assert torch.allclose(_cov(erased, free), _cov(x, free), atol=1e-9)
    mean, matrix, used = leace(x, torch.zeros(2000, 2, dtype=torch.float64), rank=2)
    assert used == 0 and matrix.abs().max() == 0  # nothing co-varies: nothing erased


def test_leace_protecting_the_identity_text_keeps_its_prediction_and_erases_the_rest() -> None:
    # x = [clothing only, clothing + identity, identity only, noise], mixed. Erasing z with the
    # identity directions protected: the linear prediction of the identity text from x is unchanged,
    # and the clothing that lives off the identity directions is gone.
    g = torch.Generator().manual_seed(2)
    cols = torch.randn(3000, 5, generator=g, dtype=torch.float64)
    cols = torch.linalg.qr(cols - cols.mean(0))[0] * 3000 ** 0.5
    cloth, shared, ident, noise = cols[:, :1], cols[:, 1:2], cols[:, 2:3], cols[:, 3:5]
    x = torch.cat([cloth, shared, ident, noise], 1) @ torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))[0]
    z, t = torch.cat([cloth, shared], 1), torch.cat([shared, ident], 1)

    def predict(a: torch.Tensor) -> torch.Tensor:  # least-squares prediction of t from a
        ac = torch.cat([a - a.mean(0), torch.ones(len(a), 1, dtype=torch.float64)], 1)
        return ac @ torch.linalg.lstsq(ac, t).solution

    mean, matrix, used = leace(x, z, rank=2, keep=t, keep_rank=2)
    erased = x - (x - mean) @ matrix.T
    assert used == 1  # the shared direction is protected: only the clothing-only one is left to erase
    assert torch.allclose(predict(erased), predict(x), atol=1e-8)
    assert _cov(erased, cloth).abs().max() < 1e-10
    assert _cov(erased, shared).abs().max() > 0.1  # kept: the identity text needs it
    mean, matrix, used = leace(x, z, rank=2)  # unprotected, the shared direction goes too
    erased = x - (x - mean) @ matrix.T
    assert used == 2 and not torch.allclose(predict(erased), predict(x), atol=1e-3)


def test_residual_removes_what_identity_text_predicts() -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.randn(500, 4, generator=g, dtype=torch.float64)
    own = torch.randn(500, 2, generator=g, dtype=torch.float64)  # clothing the text does not imply
    z = t @ torch.randn(4, 2, generator=g, dtype=torch.float64) + own + 5.0
    r = residual(z, t, ridge=1e-9)
    assert torch.allclose(r, own - own.mean(0) - (t - t.mean(0)) @ torch.linalg.lstsq(t - t.mean(0), own - own.mean(0)).solution, atol=1e-6)
    assert _cov(r, t).abs().max() < 1e-8


def test_clothing_words_are_per_image_shares_of_words_enough_images_use() -> None:
    # image 0: captions [5, 6, 0] and [5]; image 1: [6, 7]; image 2: no caption. Token 0 is special.
    z, words = clothing_words([[5, 6, 0], [5], [6, 7, 6]], [0, 0, 1], 3, min_images=2, ignore=[0])
    assert words == [6]  # 5 and 7 are used by one image each
    assert torch.equal(z, torch.tensor([[0.5], [1.0], [0.0]], dtype=torch.float64))
    z, words = clothing_words([[5, 6, 0], [5], [6, 7, 6]], [0, 0, 1], 3, min_images=1, ignore=[0])
    assert words == [5, 6, 7] and z[0].tolist() == [1.0, 0.5, 0.0]


def _tiny_model(rank: int):
    from reid.config import Config
    from reid.model import build_model

    cfg = Config()
    cfg.model.image_encoder.preset = cfg.model.text_encoder.preset = "tiny"
    cfg.model.embed_dim, cfg.model.shared_dim = 16, 32
    cfg.model.clothing_eraser.rank = rank
    torch.manual_seed(0)
    return build_model(cfg.model, cfg.disentangle, num_classes=4, image_size=(32, 16), vocab_size=50).eval()


def test_the_model_applies_the_eraser_in_retrieval_only() -> None:
    model = _tiny_model(rank=2)
    assert {"clothing_eraser.mean", "clothing_eraser.matrix"} <= set(model.state_dict())
    images = torch.randn(5, 3, 32, 16)
    with torch.no_grad():
        out = model({keys.IMAGES: images})
        assert torch.allclose(out["invariant_image_embeds"], out["image_embeds"], atol=1e-6)  # unfitted: identity
        mean, matrix = torch.randn(16) * 0.1, torch.randn(16, 16) * 0.1
        model.clothing_eraser.load_fit(mean, matrix)
        out = model({keys.IMAGES: images})
    x = out["image_embeds"]
    assert torch.allclose(out["invariant_image_embeds"], torch.nn.functional.normalize(x - (x - mean) @ matrix.T, dim=-1), atol=1e-6)
    assert torch.allclose(model.encode_image(images).detach(), x, atol=1e-6)  # the identity embedding itself is untouched
    assert "invariant_image_embeds" not in _tiny_model(rank=0)({keys.IMAGES: images})


def test_the_eraser_stays_float32_when_the_model_is_cast_to_bf16() -> None:
    """DeepSpeed's bf16 casts the whole module (``module.bfloat16()``), buffers included: the fitted
    eraser keeps its float32 values and erases in float32 (a bf16-rounded projection no longer takes
    out the directions it was fit to remove); ``.to(device)`` and ``.double()`` still apply."""
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    z = x[:, :1] + 0.5 * x[:, 1:2]  # the concept: a mix of two coordinates
    mean, matrix, _ = leace(x.double(), z.double(), rank=1)
    eraser = ClothingEraser(16)
    eraser.load_fit(mean.float(), matrix.float())
    exact = eraser(x)
    eraser.bfloat16()
    assert eraser.matrix.dtype == eraser.mean.dtype == torch.float32
    torch.testing.assert_close(eraser.matrix, matrix.float())
    out = eraser(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), exact, rtol=1e-2, atol=1e-2)
    rounded = x - (x - mean.float().bfloat16().float()) @ matrix.float().bfloat16().float().T  # the old bf16 buffers
    erased = lambda rows: _cov(rows.double(), z.double()).abs().max()  # noqa: E731
    assert erased(eraser(x)) < 1e-6 < erased(rounded)  # the rounded projection leaves the concept in
    assert eraser.double().matrix.dtype == torch.float64


def test_identity_queries_use_the_erased_rows_and_whole_captions_the_plain_ones() -> None:
    g = {"image_embeds": torch.ones(3, 2), "invariant_image_embeds": torch.zeros(3, 2), "cloth_image_embeds": torch.full((3, 2), 2.0)}
    assert torch.equal(gallery_rows(g, "clothing_invariant"), g["invariant_image_embeds"])
    assert torch.equal(gallery_rows(g, "standard", "full"), g["image_embeds"])
    assert torch.equal(gallery_rows(g, "standard", "composed"), torch.cat([g["invariant_image_embeds"], g["cloth_image_embeds"]], 1))
    plain = {k: v for k, v in g.items() if k != "invariant_image_embeds"}
    assert torch.equal(gallery_rows(plain, "clothing_invariant"), plain["image_embeds"])
    queries = {"id": torch.ones(1, 2), "cloth": torch.ones(1, 2), "full": torch.ones(1, 2)}
    assert torch.equal(mode_embeddings("clothing_invariant", queries, g)[1], g["invariant_image_embeds"])
    assert ClothingEraser(2)(torch.ones(1, 2)).tolist() == [[1.0, 1.0]]


def test_fit_on_an_export_erases_the_train_captions_clothing_words(synth_root: Path, tmp_path: Path) -> None:
    export = make_export(synth_root, tmp_path / "best", "model.clothing_eraser.rank=3", "model.clothing_eraser.min_images=2")
    model, tokenizer, cfg, meta = load_exported(export)
    assert model.clothing_eraser.matrix.abs().max() == 0  # exported before any fit
    rng = torch.get_rng_state()
    fitted = fit_clothing_eraser(model, model.clothing_eraser, cfg.data, cfg.model.clothing_eraser, tokenizer,
                                 Accelerator(cpu=True), Path(cfg.data.root), batch_size=16,
                                 pixel_mean=meta["pixel_mean"], pixel_std=meta["pixel_std"])
    assert fitted.rank == 3 and fitted.num_words > 3 and fitted.num_images > 0
    assert torch.equal(torch.get_rng_state(), rng)  # the training's random stream is left where it was
    matrix = model.clothing_eraser.matrix.double()
    assert torch.linalg.matrix_rank(matrix, atol=1e-4) == 3  # an oblique projection of rank 3
    assert torch.allclose(matrix @ matrix, matrix, atol=1e-3)
    assert "3 directions fit on" in fitted.describe()
    cfg.model.clothing_eraser.max_images = 10
    few = fit_clothing_eraser(model, ClothingEraser(cfg.model.embed_dim), cfg.data, cfg.model.clothing_eraser, tokenizer,
                              Accelerator(cpu=True), Path(cfg.data.root), batch_size=16,
                              pixel_mean=meta["pixel_mean"], pixel_std=meta["pixel_std"])
    assert few.num_images == 10 < fitted.num_images
    cfg.model.clothing_eraser.max_images, cfg.model.clothing_eraser.given_identity_text = 20000, False
    words_only = ClothingEraser(cfg.model.embed_dim)
    fit_clothing_eraser(model, words_only, cfg.data, cfg.model.clothing_eraser, tokenizer, Accelerator(cpu=True),
                        Path(cfg.data.root), batch_size=16, pixel_mean=meta["pixel_mean"], pixel_std=meta["pixel_std"])
    assert (words_only.matrix - model.clothing_eraser.matrix).abs().max() > 1e-3  # the residual step matters

    # exported with its fit, searched: the clothing-invariant mode ranks the erased rows
    from reid import search
    from reid.export import export_model

    erased = export_model(Accelerator(cpu=True), model, tmp_path / "erased", cfg=cfg, tokenizer=tokenizer, meta=meta)
    result = search.search(erased, "synthetic", "A tall young woman with long black hair, in a red coat.",
                           mode="clothing-invariant", top_k=3, split="val", cache_dir=tmp_path / "cache")
    loaded, *_ = load_exported(erased)
    embeds, kept, _ = search.encode_gallery(loaded, [h.path for h in result.hits], meta, torch.device("cpu"))
    scores = embeds["invariant_image_embeds"] @ result.query.vector
    assert torch.allclose(scores, torch.tensor([h.score for h in result.hits]), atol=1e-5)
    assert not torch.allclose(embeds["image_embeds"] @ result.query.vector, scores, atol=1e-3)
    from reid.eval_report import format_report
    from reid.evaluation import evaluate_split

    report = evaluate_split(model, cfg, tokenizer, meta, Accelerator(cpu=True), split="val")
    assert report["clothing_eraser"] == 3
    assert "identity embedding through the clothing eraser (3 directions)" in format_report(report).splitlines()[0]


def _erase_main():
    spec = importlib.util.spec_from_file_location("launch_erase", REPO / "launch" / "erase_clothing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_erase_clothing_cli_never_overwrites(synth_root: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "taken").mkdir()
    assert _erase_main()(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out:" in err[0] and "exists" in err[0]
    assert _erase_main()(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an exported reid model" in err[0] and not (tmp_path / "new").exists()
    assert _erase_main()(["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "new"), "--rank", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--rank: -1 must be >= 0" in err[0]


@pytest.mark.slow
def test_the_trainer_fits_it_and_the_cli_fits_the_same_on_two_processes(synth_root: Path, tmp_path: Path) -> None:
    proc = run_launch([str(REPO / "launch" / "train.py"), f"data.root={synth_root}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.num_workers=1", "data.batch_size=16", f"train.output_dir={tmp_path / 'runs'}",
                       "train.run_name=erased", "train.progress=false", "train.epochs=1", "train.eval_every=1",
                       "model.clothing_eraser.rank=4", "model.clothing_eraser.min_images=2"])
    assert "clothing eraser: 4 directions fit on" in proc.stdout
    best = tmp_path / "runs" / "erased" / "best"
    assert load_state_dict(best)["clothing_eraser.matrix"].abs().max() > 0  # the export carries the fit
    fits = {}
    for name, config in (("one", None), ("two", "cpu_ddp")):
        out = tmp_path / f"refit-{name}"
        proc = run_launch(["launch/erase_clothing.py", "--checkpoint", str(best), "--out", str(out), "--rank", "2"],
                          accel_config=config, timeout=300)
        assert "clothing eraser: 2 directions" in proc.stdout
        fits[name] = load_state_dict(out)
    assert torch.allclose(fits["one"]["clothing_eraser.matrix"], fits["two"]["clothing_eraser.matrix"], atol=1e-5)
    assert torch.allclose(fits["one"]["clothing_eraser.mean"], fits["two"]["clothing_eraser.mean"], atol=1e-6)
    model, *_ = load_exported(tmp_path / "refit-one")
    assert model.clothing_eraser is not None and torch.equal(model.clothing_eraser.matrix, fits["one"]["clothing_eraser.matrix"])
    # --rank 0 takes it off: the same weights, no eraser, and the export loads
    proc = run_launch(["launch/erase_clothing.py", "--checkpoint", str(best), "--out", str(tmp_path / "off"), "--rank", "0"],
                      timeout=300)
    assert "clothing eraser: none" in proc.stdout
    model, _, cfg, _ = load_exported(tmp_path / "off")
    assert model.clothing_eraser is None and cfg.model.clothing_eraser.rank == 0
    kept = load_state_dict(tmp_path / "off")
    assert not any(k.startswith("clothing_eraser.") for k in kept)
    trained = load_state_dict(best)
    assert set(kept) == {k for k in trained if not k.startswith("clothing_eraser.")}
    assert all(torch.equal(v, trained[k]) for k, v in kept.items())
