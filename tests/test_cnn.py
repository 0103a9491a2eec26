"""CNN image encoders (Hugging Face ResNet and ConvNeXt directories), from tiny random ones written
here: strict loading without the classifier, the pooled feature, a width that differs from the
text encoder's, BatchNorm synchronised across processes, exports; the `accelerate launch` runs
(1 process against 2 under ZeRO-2, whose equality needs the encoder's BatchNorm synchronised) are
marked slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from reid.config import DisentangleConfig, EncoderConfig, ModelConfig, load_config
from reid.data import keys as K
from reid.errors import ConfigError
from reid.losses import Criterion
from reid.model import SyncBatchNorm2d, build_model
from reid.model.encoders import build_image_encoder, feature_width, image_features
from tests.conftest import REPO, run_launch
from tests.test_model import CLASSES, VOCAB, edit_weights, every_term, make_batch

SIZE = (64, 32)


def save_cnn(directory: Path, kind: str, width: int = 64, classifier: bool = True) -> Path:
    """A tiny random ResNet (basic blocks) or ConvNeXt, last stage ``width`` wide, saved as `hf download`
    leaves an image classifier (``...ForImageClassification``: the encoder plus ``classifier.*``)."""
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ConvNextModel,
        ResNetConfig,
        ResNetForImageClassification,
        ResNetModel,
    )

    torch.manual_seed(0)
    if kind == "resnet":
        config = ResNetConfig(embedding_size=16, hidden_sizes=[16, width], depths=[1, 1], layer_type="basic", num_labels=3)
        model = (ResNetForImageClassification if classifier else ResNetModel)(config)
    else:
        config = ConvNextConfig(num_stages=2, hidden_sizes=[16, width], depths=[1, 1], num_labels=3)
        model = (ConvNextForImageClassification if classifier else ConvNextModel)(config)
    model.save_pretrained(directory)
    return directory


def cnn_model(directory: Path, text_hidden: int = 0, dcfg: DisentangleConfig | None = None, **kwargs):
    cfg = ModelConfig(image_encoder=EncoderConfig(path=str(directory)), text_encoder=EncoderConfig(hidden=text_hidden))
    torch.manual_seed(0)
    return build_model(cfg, dcfg or every_term(), num_classes=CLASSES, image_size=SIZE, vocab_size=VOCAB, **kwargs)


@pytest.mark.parametrize("kind", ["resnet", "convnext"])
def test_a_cnn_directory_loads_without_its_classifier_and_its_feature_is_the_pooled_last_stage(kind, tmp_path) -> None:
    from transformers import AutoModel

    directory = save_cnn(tmp_path / kind, kind)
    model = cnn_model(directory).eval()
    assert type(model.image_encoder).__name__ == {"resnet": "ResNetModel", "convnext": "ConvNextModel"}[kind]
    assert feature_width(model.image_encoder) == 64 and model.id_projection.in_features == 64
    saved = AutoModel.from_pretrained(directory).eval()  # the encoder alone, as transformers loads it
    images = torch.randn(3, 3, *SIZE)
    with torch.no_grad():
        feats = image_features(model.image_encoder, images)
        assert feats.shape == (3, 64)
        torch.testing.assert_close(feats, saved(pixel_values=images).pooler_output.flatten(1))  # loaded, not random
        torch.testing.assert_close(model._image_features(images), feats)

    model.train()
    batch = make_batch(size=SIZE)
    total, terms, _ = Criterion(every_term())(model(batch), batch)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    untrained = [n for n, p in model.image_encoder.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not untrained, untrained[:5]


def test_a_resnet_as_wide_as_resnet_50_beside_a_narrower_text_encoder(tmp_path) -> None:
    """Image features 128 wide (ResNet-50: 2048) and a 64-d text encoder (BERT-base: 768): the branch
    projections take them to 64."""
    model = cnn_model(save_cnn(tmp_path / "wide", "resnet", width=128))
    assert tuple(model.id_projection.weight.shape) == tuple(model.cloth_projection.weight.shape) == (64, 128)
    with torch.no_grad():
        assert model.eval().encode_image(torch.randn(2, 3, *SIZE)).shape == (2, 256)


def test_resnet_batchnorm_is_synchronised_when_training_on_several_processes(tmp_path) -> None:
    directory = save_cnn(tmp_path / "resnet", "resnet")
    plain, synced = cnn_model(directory), cnn_model(directory, sync_bn=True)
    assert not any(isinstance(m, SyncBatchNorm2d) for m in plain.modules())
    norms = [m for m in synced.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, SyncBatchNorm2d) for m in norms)
    assert synced.state_dict().keys() == plain.state_dict().keys()


def test_what_a_cnn_cannot_do_is_one_error(tmp_path) -> None:
    directory = save_cnn(tmp_path / "convnext", "convnext")
    with pytest.raises(ConfigError, match=r"model.image_encoder.gradient_checkpointing: the ConvNextModel in '.*' "
                                          r"does not support gradient checkpointing"):
        build_image_encoder(EncoderConfig(path=str(directory), gradient_checkpointing=True), SIZE)
    with pytest.raises(ConfigError, match=r"data.image_size: \(6, 6\) is smaller than the convnext in "
                                          r"model.image_encoder.path \('.*'\) reduces to one position \(8 pixels"):
        build_image_encoder(EncoderConfig(path=str(directory)), (6, 6))
    broken = shutil.copytree(save_cnn(tmp_path / "resnet", "resnet"), tmp_path / "broken")
    edit_weights(broken, lambda s: s.pop("resnet.embedder.embedder.convolution.weight"))
    with pytest.raises(ConfigError, match=r"do not fit its ResNetModel \(1 missing: embedder.embedder.convolution.weight\)"):
        build_image_encoder(EncoderConfig(path=str(broken)), SIZE)


def test_an_export_of_a_cnn_model_loads_without_the_directory(tmp_path) -> None:
    from accelerate import Accelerator

    from reid.data import build_tokenizer
    from reid.export import export_model, load_exported

    source = save_cnn(tmp_path / "resnet", "resnet", width=128)  # and a width the text side does not have
    cfg = load_config(None, [f"model.image_encoder.path={source}", "data.image_size=[64,32]"])
    tokenizer = build_tokenizer(cfg.data)
    model = build_model(cfg.model, cfg.disentangle, num_classes=CLASSES, image_size=SIZE,
                        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id).eval()
    meta = {"num_classes": CLASSES, "image_size": list(SIZE), "pixel_mean": [0.5] * 3, "pixel_std": [0.5] * 3}
    export = export_model(Accelerator(cpu=True), model, tmp_path / "best", cfg=cfg, tokenizer=tokenizer, meta=meta)
    shutil.rmtree(source)
    loaded, _, _, _ = load_exported(export)
    assert type(loaded.image_encoder).__name__ == "ResNetModel"
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded({K.IMAGES: images})["image_embeds"], model({K.IMAGES: images})["image_embeds"])


# --------------------------------------------------------------------------------------- end to end
TRAIN = str(REPO / "launch" / "train.py")


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"train"' in line]


@pytest.mark.slow
def test_a_resnet_under_zero2_two_processes_equal_one(tmp_path, synth_root) -> None:
    """DeepSpeed ZeRO-2 over 2 CPU processes x 4 rows gives the losses and gradient norms of 1 process
    x 8 rows with a ResNet image encoder: its BatchNorm2d normalises with the statistics of all 8
    rows (SyncBatchNorm2d); per-process statistics would differ. The export loads as a ResNet."""
    from reid.export import load_exported

    resnet = save_cnn(tmp_path / "resnet", "resnet")

    def train(name: str, batch: int, accel: str | None = None) -> None:
        args = [TRAIN, f"data.root={synth_root}", f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0",
                f"data.batch_size={batch}", "data.image_size=[64,32]", f"model.image_encoder.path={resnet}",
                f"train.output_dir={tmp_path / 'runs'}", f"train.run_name={name}", "train.progress=false",
                "train.log_every=1", "train.max_steps=2", "train.eval_every=0", "model.mlp_dropout=0",
                "train.max_grad_norm=1000", "disentangle.cloth_match.form=seed"]
        run_launch(args, **({"accel_config": accel} if accel else {}))

    train("one", 8)
    train("zero2", 4, "cpu_zero2")
    one, two = _log(tmp_path / "runs" / "one"), _log(tmp_path / "runs" / "zero2")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert b["loss/total"] == pytest.approx(a["loss/total"], rel=1e-5), a["step"]
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), a["step"]
    model, _, _, meta = load_exported(tmp_path / "runs" / "zero2" / "final")
    assert meta["image_size"] == [64, 32] and type(model.image_encoder).__name__ == "ResNetModel"
