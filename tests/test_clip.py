"""CLIP encoders, from a tiny random CLIP and a BPE tokenizer written here (nothing is downloaded):
loading (strict, as every encoder directory), features, pooling, resizing, exports; the end-to-end
runs through `accelerate launch` are marked slow."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reid.config import DataConfig, DisentangleConfig, EncoderConfig, ModelConfig, load_config
from reid.data import keys as K
from bench.random_clip import CLIP_MEAN, CLIP_STD  # what the saved image processor says
from reid.errors import ConfigError, MissingWeightsError
from reid.losses import Criterion
from reid.model import build_model
from reid.model.encoders import build_image_encoder, build_text_encoder, encoders_from_configs
from tests.conftest import REPO, run_launch
from tests.test_model import edit_weights

CLASSES, B = 5, 6
HIDDEN, PROJECTION = 32, 48  # the features are projection_dim wide, not hidden_size
WORDS = ("a", "man", "woman", "in", "red", "black", "blue", "coat", "shirt", "with", "and", "the")


def clip_tokenizer():
    """bench/random_clip.py's CLIP-shaped byte-level BPE tokenizer, each of ``WORDS`` one token."""
    from bench.random_clip import clip_tokenizer as make

    return make(WORDS)


def save_clip(directory: Path, *, eos_token_id: int = 2, seed: int = 0) -> Path:
    """A tiny random ``CLIPModel`` (hidden 32, projection 48, 32x32 images, patches of 8) with its
    tokenizer and image processor, as `hf download` leaves one (bench/random_clip.py). Its text
    config says ``eos_token_id: 2``, as openai's CLIP configs do, unless told otherwise."""
    from bench.random_clip import SIZES, save_random_clip

    assert SIZES["tiny"]["projection_dim"] == PROJECTION and SIZES["tiny"]["vision"]["hidden_size"] == HIDDEN
    return save_random_clip(directory, "tiny", WORDS, seed=seed, eos_token_id=eos_token_id)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip") / "clip-tiny")


def clip_model_config(image: Path, text: Path | None = None, **kwargs) -> ModelConfig:
    return ModelConfig(image_encoder=EncoderConfig(path=str(image)), text_encoder=EncoderConfig(path=str(text or image)),
                       **kwargs)


def build_clip(clip_dir: Path, size=(32, 32), dcfg: DisentangleConfig | None = None, text: Path | None = None, **kwargs):
    tokenizer = clip_tokenizer()
    torch.manual_seed(0)
    return build_model(clip_model_config(clip_dir, text), dcfg or DisentangleConfig(), num_classes=CLASSES,
                       image_size=size, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, **kwargs)


def text_batch(texts: list[str]) -> dict[str, torch.Tensor]:
    enc = clip_tokenizer()(texts, padding=True, return_tensors="pt")
    return {K.INPUT_IDS: enc["input_ids"], K.ATTENTION_MASK: enc["attention_mask"]}


def train_batch(size=(32, 32)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    texts = ["a man in a red coat", "a woman with a blue shirt", "the man in black", "a woman in red and black",
             "a man with a coat", "the woman in a blue coat"]
    batch = {K.IMAGES: torch.randn(B, 3, *size, generator=g), K.PIDS: torch.arange(B) // 2 % CLASSES,
             K.CLOTH_VALID: torch.ones(B, dtype=torch.bool)}
    for prefix, shift in (("id", 0), ("cloth", 1), ("neg_cloth", 2)):
        enc = text_batch(texts[shift:] + texts[:shift])
        batch[f"{prefix}_input_ids"], batch[f"{prefix}_attention_mask"] = enc[K.INPUT_IDS], enc[K.ATTENTION_MASK]
    return batch


# ------------------------------------------------------------------------------------------- loading
def test_one_clip_directory_gives_both_towers_with_their_weights_and_projected_features(clip_dir: Path) -> None:
    from transformers import CLIPModel

    model = build_clip(clip_dir).eval()
    assert type(model.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert type(model.text_encoder).__name__ == "CLIPTextModelWithProjection"
    saved = CLIPModel.from_pretrained(clip_dir).eval()
    for name, tensor in [("visual_projection.weight", model.image_encoder.visual_projection.weight),
                         ("text_projection.weight", model.text_encoder.text_projection.weight),
                         ("vision_model.embeddings.class_embedding", model.image_encoder.vision_model.embeddings.class_embedding),
                         ("text_model.embeddings.token_embedding.weight", model.text_encoder.text_model.embeddings.token_embedding.weight)]:
        torch.testing.assert_close(tensor, saved.state_dict()[name], msg=name)  # loaded, not random

    batch = train_batch()
    with torch.no_grad():
        feats = model._image_features(batch[K.IMAGES])
        torch.testing.assert_close(feats, saved.get_image_features(pixel_values=batch[K.IMAGES]).pooler_output)
        text = model._pooled_text(batch[K.ID_INPUT_IDS], batch[K.ID_ATTENTION_MASK])
    assert feats.shape == text.shape == (B, PROJECTION)
    assert model.hidden_size == PROJECTION and model.id_projection.in_features == PROJECTION

    model.train()
    dcfg = DisentangleConfig()
    total, terms, _ = Criterion(dcfg)(model(batch), batch)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    frozen = [n for n, p in model.named_parameters() if p.grad is None and n.startswith(("image_encoder.", "text_encoder."))]
    assert not frozen, frozen[:5]


def test_separate_tower_directories_give_the_same_model(clip_dir: Path, tmp_path: Path) -> None:
    whole = build_clip(clip_dir).eval()
    whole.image_encoder.save_pretrained(tmp_path / "vision")  # model_type clip_vision_model
    whole.text_encoder.save_pretrained(tmp_path / "text")  # model_type clip_text_model
    clip_tokenizer().save_pretrained(tmp_path / "text")
    assert json.loads((tmp_path / "vision" / "config.json").read_text())["model_type"] == "clip_vision_model"
    apart = build_clip(tmp_path / "vision", text=tmp_path / "text").eval()
    torch.testing.assert_close(apart.state_dict(), whole.state_dict())


# 2: openai's configs (pooled at the largest id); 49407: CLIPTextConfig's default, an id this tokenizer lacks
@pytest.mark.parametrize("config_eos", [2, 49407])
def test_pooling_picks_the_real_end_of_text_token_and_padding_never_counts(config_eos: int, tmp_path: Path) -> None:
    tokenizer = clip_tokenizer()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == len(tokenizer) - 1  # CLIP pads with <|endoftext|>
    model = build_clip(save_clip(tmp_path / "clip", eos_token_id=config_eos)).eval()
    assert model.pad_token_id == tokenizer.pad_token_id  # not the config's pad_token_id 1, a real token
    # whatever the config said, the tower is pooled at the tokenizer's end-of-text id
    assert model.text_encoder.config.eos_token_id == model.text_encoder.text_model.eos_token_id == tokenizer.eos_token_id
    batch = text_batch(["a man", "a woman in a red coat with a blue shirt"])
    ids = batch[K.INPUT_IDS]
    assert ids[0, 0] == tokenizer.bos_token_id and (ids[0] == tokenizer.eos_token_id).sum() > 1  # padded with it
    with torch.no_grad():
        pooled = model._pooled_text(ids, batch[K.ATTENTION_MASK])
        alone = model._pooled_text(ids[:1, :4], batch[K.ATTENTION_MASK][:1, :4])  # unpadded: bos a man eos
        hidden = model.text_encoder(input_ids=ids).last_hidden_state  # after the final layer norm
    torch.testing.assert_close(pooled[:1], alone)
    eos_at = [int((row == tokenizer.eos_token_id).nonzero()[0]) for row in ids]
    expected = model.text_encoder.text_projection(hidden[torch.arange(2), eos_at])
    torch.testing.assert_close(pooled, expected)
    # The model pads fields of different lengths with the tokenizer's id, and they pool the same.
    short, long_ = text_batch(["a man in red"]), text_batch(["the woman with a black coat and a blue shirt"])
    fields = {K.ID_INPUT_IDS: short[K.INPUT_IDS], K.ID_ATTENTION_MASK: short[K.ATTENTION_MASK],
              K.CLOTH_INPUT_IDS: long_[K.INPUT_IDS], K.CLOTH_ATTENTION_MASK: long_[K.ATTENTION_MASK]}
    with torch.no_grad():
        together = model._encode_fields(fields, ["id", "cloth"])
        torch.testing.assert_close(together[0], model.encode_text(short[K.INPUT_IDS], short[K.ATTENTION_MASK]))


def test_a_rectangular_image_size_resizes_positions_once_and_configs_rebuild_the_same_shapes(clip_dir: Path) -> None:
    square = build_image_encoder(EncoderConfig(path=str(clip_dir)), (32, 32)).eval()
    tall = build_image_encoder(EncoderConfig(path=str(clip_dir)), (64, 32)).eval()
    emb, old = tall.vision_model.embeddings, square.vision_model.embeddings
    assert emb.position_embedding.weight.shape == (1 + 8 * 4, HIDDEN)  # patch 8 from the CLIP config
    torch.testing.assert_close(emb.position_embedding.weight[0], old.position_embedding.weight[0])  # class position
    assert tall.config.image_size == [64, 32]
    assert tall.state_dict().keys() == square.state_dict().keys()  # the same parameter names
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = tall(pixel_values=images).image_embeds
    assert out.shape == (2, PROJECTION)
    with pytest.raises(ValueError, match=r"images of \(32, 32\): this encoder takes \(64, 32\)"):
        tall(pixel_values=torch.randn(1, 3, 32, 32))

    text = build_text_encoder(EncoderConfig(path=str(clip_dir)))
    rebuilt, _ = encoders_from_configs(copy.deepcopy(tall.config), copy.deepcopy(text.config))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in tall.state_dict().items()}
    rebuilt.load_state_dict(tall.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(pixel_values=images).image_embeds, out)
    with pytest.raises(ConfigError, match=r"multiples of the ViT patch size \(8\)"):
        build_image_encoder(EncoderConfig(path=str(clip_dir)), (60, 32))


def test_an_export_loads_without_the_clip_directory(clip_dir: Path, tmp_path: Path) -> None:
    from accelerate import Accelerator

    from reid.export import export_model, load_exported

    source = shutil.copytree(clip_dir, tmp_path / "clip")
    cfg = load_config(None, [f"model.image_encoder.path={source}", f"model.text_encoder.path={source}",
                             "data.image_size=[64,32]", "data.text_max_length=77"])
    tokenizer = clip_tokenizer()
    model = build_clip(source, size=(64, 32)).eval()
    meta = {"num_classes": CLASSES, "image_size": [64, 32], "pixel_mean": CLIP_MEAN, "pixel_std": CLIP_STD}
    export = export_model(Accelerator(cpu=True), model, tmp_path / "best", cfg=cfg, tokenizer=tokenizer, meta=meta)
    shutil.rmtree(source)
    loaded, tokenizer2, _, _ = load_exported(export)
    assert tokenizer2.eos_token_id == tokenizer.eos_token_id and loaded.pad_token_id == tokenizer.pad_token_id
    batch = text_batch(["a woman in a red coat"])
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded({K.IMAGES: images})["image_embeds"], model({K.IMAGES: images})["image_embeds"])
        torch.testing.assert_close(loaded(batch)["text_embeds"], model(batch)["text_embeds"])


def test_what_follows_the_clip_directory_tokenizer_and_pixel_statistics(clip_dir: Path) -> None:
    from reid.data import build_tokenizer
    from reid.data.transforms import pixel_stats

    tokenizer = build_tokenizer(DataConfig(text_max_length=77), str(clip_dir))
    assert type(tokenizer).__name__ == "CLIPTokenizer" and tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer("a woman in a red coat")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    mean, std = pixel_stats(encoder_path=str(clip_dir))
    assert list(mean) == pytest.approx(CLIP_MEAN) and list(std) == pytest.approx(CLIP_STD)


def test_a_text_length_beyond_the_clip_context_is_one_error(clip_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.text_max_length: 100 tokens, but model.text_encoder \(path '.*'\) "
                                          r"reads at most 77 \(its max_position_embeddings\)"):
        build_clip(clip_dir, text_max_length=100)
    build_clip(clip_dir, text_max_length=77)


def test_mean_text_pooling_with_clip_is_an_error(clip_dir: Path) -> None:
    tokenizer = clip_tokenizer()
    with pytest.raises(ConfigError, match="model.text_pool: 'mean' does not apply to a CLIP text encoder"):
        build_model(clip_model_config(clip_dir, text_pool="mean"), DisentangleConfig(), num_classes=CLASSES,
                    image_size=(32, 32), vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id)
    with pytest.raises(ConfigError, match="has no eos_token"):
        build_model(clip_model_config(clip_dir), DisentangleConfig(), num_classes=CLASSES, image_size=(32, 32),
                    vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)


def test_a_clip_image_tower_beside_a_text_encoder_of_another_width(clip_dir: Path) -> None:
    cfg = ModelConfig(image_encoder=EncoderConfig(path=str(clip_dir)), text_encoder=EncoderConfig(preset="tiny"))
    model = build_model(cfg, DisentangleConfig(), num_classes=CLASSES, image_size=(32, 32), vocab_size=50)
    assert tuple(model.id_projection.weight.shape) == (64, PROJECTION)  # the projected image feature -> BERT's 64
    with torch.no_grad():
        assert model.eval().encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 256)


# ----------------------------------------------------------------------------------- strict loading
def test_clip_towers_are_checked_too(clip_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPVisionModel

    vision = build_image_encoder(EncoderConfig(path=str(clip_dir)), (32, 32))
    CLIPVisionModel(vision.config).save_pretrained(tmp_path / "no_projection")  # a tower without its projection
    with pytest.raises(ConfigError, match=r"do not fit its CLIPVisionModelWithProjection \(1 missing: visual_projection.weight\)"):
        build_image_encoder(EncoderConfig(path=str(tmp_path / "no_projection")), (32, 32))

    extra = shutil.copytree(clip_dir, tmp_path / "with_position_ids")  # older files hold the buffers too
    edit_weights(extra, lambda s: s.update({"vision_model.embeddings.position_ids": torch.arange(17)[None],
                                             "text_model.embeddings.position_ids": torch.arange(77)[None]}))
    build_image_encoder(EncoderConfig(path=str(extra)), (32, 32))
    build_text_encoder(EncoderConfig(path=str(extra)))

    broken = shutil.copytree(clip_dir, tmp_path / "broken")
    edit_weights(broken, lambda s: s.pop("text_model.final_layer_norm.weight"))
    build_image_encoder(EncoderConfig(path=str(broken)), (32, 32))  # the image tower does not read it
    with pytest.raises(ConfigError, match=r"1 missing: text_model.final_layer_norm.weight"):
        build_text_encoder(EncoderConfig(path=str(broken)))


def test_a_directory_without_weights_is_one_error(clip_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "config-only"
    empty.mkdir()
    shutil.copy(clip_dir / "config.json", empty / "config.json")
    with pytest.raises(MissingWeightsError, match=r"model.image_encoder.path: cannot load weights from '.*config-only'"):
        build_image_encoder(EncoderConfig(path=str(empty)), (32, 32))
    with pytest.raises(MissingWeightsError, match=r"model.text_encoder.path: cannot load weights"):
        build_text_encoder(EncoderConfig(path=str(empty)))


def test_the_clip_config_is_irras_recipe() -> None:
    cfg = load_config(REPO / "configs" / "cuhk_pedes_clip.yaml")
    assert cfg.model.image_encoder.path == cfg.model.text_encoder.path == "weights/clip-vit-base-patch16"
    assert cfg.data.image_size == (384, 128) and cfg.data.text_max_length == 77 and cfg.data.batch_size == 64
    assert (cfg.optim.lr, cfg.optim.head_lr) == (1e-5, 5e-5) and cfg.optim.min_lr_ratio == 0.0
    assert cfg.optim.warmup_steps == 5 * (68126 // 64)  # 5 epochs of CUHK-PEDES captions at batch 64
    assert cfg.train.epochs == 60 and cfg.disentangle.temperature == 0.02
    assert not cfg.disentangle.learnable_temperature and cfg.model.text_pool == "cls"


# --------------------------------------------------------------------------------------- end to end
TRAIN = str(REPO / "launch" / "train.py")
EVALUATE = str(REPO / "launch" / "evaluate.py")


def _train_args(tmp: Path, root: Path, clip: Path, name: str, *extra: str) -> list[str]:
    return [TRAIN, f"data.root={root}", f"data.cache_dir={tmp / 'cache'}", "data.num_workers=0", "data.batch_size=8",
            "data.image_size=[64,32]", "data.text_max_length=77", f"model.image_encoder.path={clip}",
            f"model.text_encoder.path={clip}", "model.text_pool=cls", f"train.output_dir={tmp / 'runs'}", f"train.run_name={name}",
            "train.progress=false", "train.log_every=1", "eval.batch_size=32", *extra]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"train"' in line]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, synth_root):
    """Train 2 epochs of a few steps from the tiny CLIP directory through `accelerate launch`."""
    tmp = tmp_path_factory.mktemp("clip_e2e")
    clip = save_clip(tmp / "clip-tiny")
    run_launch(_train_args(tmp, synth_root, clip, "clip", "train.epochs=1", "train.max_steps=3"))
    return tmp, clip, tmp / "runs" / "clip"


@pytest.mark.slow
def test_clip_trains_resumes_and_its_export_evaluates_and_searches_without_the_directory(clip_run, synth_root):
    tmp, clip, run = clip_run
    assert [r["step"] for r in _log(run)] == [1, 2, 3]
    meta = json.loads((run / "final" / "reid_model.json").read_text())
    assert meta["pixel_mean"] == pytest.approx(CLIP_MEAN) and meta["image_size"] == [64, 32]
    assert json.loads((run / "final" / "encoders" / "image" / "config.json").read_text())["image_size"] == [64, 32]

    proc = run_launch([*_train_args(tmp, synth_root, clip, "clip", "train.epochs=1", "train.max_steps=5"),
                       "--resume", "latest"])
    assert "resumed from" in proc.stdout + proc.stderr
    assert [r["step"] for r in _log(run)] == [1, 2, 3, 4, 5]

    moved = clip.rename(clip.with_name("moved-away"))  # the export needs nothing from it
    try:
        out = tmp / "eval.json"
        run_launch([EVALUATE, "--checkpoint", str(run / "final"), "--split", "test", "--no-probes", "--json", str(out)])
        report = json.loads(out.read_text())
        assert report["split"] == "test" and 0.0 <= report["retrieval"]["standard"]["standard"]["R1"] <= 100.0, report

        search = [str(Path(sys.executable).with_name("reid-search")), "--checkpoint", str(run / "final"),
                  "--gallery", str(synth_root), "--split", "test", "--query", "a woman in a red coat",
                  "--top-k", "3", "--out", str(tmp / "search.png"), "--cache-dir", str(tmp / "search-cache")]
        proc = subprocess.run(search, capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert proc.returncode == 0, proc.stderr[-3000:]
        ranked = [line for line in proc.stdout.splitlines() if line[:4].strip().isdigit()]
        assert len(ranked) == 3 and (tmp / "search.png").is_file()
        assert "does not know" not in proc.stderr  # byte-level BPE knows every word
    finally:
        moved.rename(clip)


@pytest.mark.slow
def test_clip_under_zero2_two_processes_equal_one(clip_run, synth_root):
    """DeepSpeed ZeRO-2 over 2 CPU processes x 4 rows gives the losses and gradient norms of 1 process
    x 8 rows (no dropout; the seed form of cloth_match, whose numbers do not hinge on an argmax)."""
    from reid.export import load_exported

    tmp, clip, _ = clip_run
    same = ("train.max_steps=2", "train.eval_every=0", "model.mlp_dropout=0", "train.max_grad_norm=1000",
            "disentangle.cloth_match.form=seed")
    run_launch(_train_args(tmp, synth_root, clip, "one", "data.batch_size=8", *same))
    run_launch(_train_args(tmp, synth_root, clip, "zero2", "data.batch_size=4", *same), accel_config="cpu_zero2")
    one, two = _log(tmp / "runs" / "one"), _log(tmp / "runs" / "zero2")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-5), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), a["step"]
    model, _, _, meta = load_exported(tmp / "runs" / "zero2" / "final")
    assert meta["image_size"] == [64, 32] and type(model.image_encoder).__name__ == "CLIPVisionModelWithProjection"
