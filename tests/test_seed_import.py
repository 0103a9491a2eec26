"""Importing a checkpoint in the seed's format (load_param's .pth) into a reid export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reid.config import load_config
from reid.data import keys as K
from reid.errors import CheckpointError
from tests.conftest import REPO
from tests.data_fixtures import CAPTIONS


def _encoders(tmp_path: Path) -> list[str]:
    """Tiny pretrained-style ViT and BERT directories (the BERT one with its tokenizer)."""
    from reid.data.tokenizer import build_word_tokenizer
    from reid.config import EncoderConfig
    from reid.model.encoders import build_image_encoder, build_text_encoder

    tokenizer = build_word_tokenizer(CAPTIONS, tmp_path / "tok", 32)
    torch.manual_seed(0)
    build_image_encoder(EncoderConfig(preset="tiny"), (32, 16)).save_pretrained(tmp_path / "vit")
    build_text_encoder(EncoderConfig(preset="tiny"), vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id
                       ).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    return [f"model.image_encoder.path={tmp_path / 'vit'}", f"model.text_encoder.path={tmp_path / 'bert'}",
            "data.image_size=[32,16]", "data.text_max_length=32", f"data.cache_dir={tmp_path / 'cache'}"]


def _seed_checkpoint(model: torch.nn.Module, path: Path, wrap: str = "state_dict", drop: str = "") -> None:
    """The model's weights as the seed's code names them: visual_encoder.*, poolers, a bare scale."""
    state = {}
    for name, tensor in model.state_dict().items():
        if drop and name.startswith(drop):
            continue
        name = "visual_encoder." + name[len("image_encoder."):] if name.startswith("image_encoder.") else name
        state["scale" if name == "scale.value" else name] = tensor.clone()
    state["visual_encoder.pooler.dense.weight"] = torch.zeros(64, 64)  # the seed's ViTModel has a pooler
    state["text_encoder.pooler.dense.weight"] = torch.zeros(64, 64)
    torch.save({wrap: state} if wrap else state, path)


def test_a_seed_checkpoint_becomes_an_export_that_retrieves_like_the_seed_model(tmp_path, capsys):
    from reid.data.tokenizer import build_tokenizer
    from reid.export import load_exported
    from reid.model import build_model
    from reid.seed_import import main

    overrides = _encoders(tmp_path)
    cfg = load_config(REPO / "configs" / "cuhk_pedes_seed.yaml", overrides)
    tokenizer = build_tokenizer(cfg.data, cfg.model.text_encoder.path)
    torch.manual_seed(1)
    seed_model = build_model(cfg.model, cfg.disentangle, num_classes=7, image_size=cfg.data.image_size,
                             vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id).eval()
    with torch.no_grad():  # trained weights, not the directories' initial ones
        for p in seed_model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    _seed_checkpoint(seed_model, tmp_path / "seed.pth", wrap="model")
    assert main(["--checkpoint", str(tmp_path / "seed.pth"), "--config", str(REPO / "configs" / "cuhk_pedes_seed.yaml"),
                 "--out", str(tmp_path / "export"), *overrides]) == 0
    out = capsys.readouterr().out
    assert "2 dropped (encoder poolers: reid builds none)" in out and f"wrote {tmp_path / 'export'}" in out

    model, tok, _, meta = load_exported(tmp_path / "export")
    assert meta["num_classes"] == 7
    images = torch.randn(3, 3, 32, 16)
    ids = tok(CAPTIONS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        for batch, key in (({K.IMAGES: images}, "image_embeds"),
                           ({K.INPUT_IDS: ids["input_ids"], K.ATTENTION_MASK: ids["attention_mask"]}, "text_embeds")):
            torch.testing.assert_close(model(batch)[key], seed_model(batch)[key])


@pytest.mark.parametrize("wrap", ["state_dict", ""])
def test_a_checkpoint_without_a_retrieval_tensor_is_one_line(tmp_path, wrap):
    from reid.data.tokenizer import build_tokenizer
    from reid.model import build_model
    from reid.seed_import import import_seed

    overrides = _encoders(tmp_path)
    cfg = load_config(REPO / "configs" / "cuhk_pedes_seed.yaml", overrides)
    tokenizer = build_tokenizer(cfg.data, cfg.model.text_encoder.path)
    model = build_model(cfg.model, cfg.disentangle, num_classes=7, image_size=cfg.data.image_size,
                        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    _seed_checkpoint(model, tmp_path / "seed.pth", wrap=wrap, drop="shared_mlp.")
    with pytest.raises(CheckpointError) as info:
        import_seed(tmp_path / "seed.pth", cfg, tmp_path / "export")
    assert "2 retrieval tensors missing: shared_mlp.weight, shared_mlp.bias" in str(info.value)
    assert not (tmp_path / "export").exists()


def test_what_is_not_a_weights_only_checkpoint_is_refused(tmp_path):
    from reid.seed_import import read_seed_state

    torch.save({"state_dict": {"x": torch.zeros(1)}, "args": Path("runs")}, tmp_path / "pickled.pth")  # an object: not weights-only
    with pytest.raises(CheckpointError, match="not a weights-only torch checkpoint"):
        read_seed_state(tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        read_seed_state(tmp_path / "missing.pth")
