"""bench/pretrain_perception.py: the encoder it saves is one `model.image_encoder.path` loads, and
it reports every fact it was asked to read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from reid.config import EncoderConfig
from reid.model.encoders import build_image_encoder, feature_width

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # trains an epoch of the encoder in a subprocess
@pytest.mark.parametrize("arch", ["vit", "resnet", "convnext"])
def test_the_saved_encoder_loads_and_every_fact_is_reported(arch: str, synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / arch
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_perception.py"), "--epochs", "1",
                           "--arch", arch, "--batch-size", "16", "--out", str(out), f"data.root={synth_root}",
                           f"data.cache_dir={tmp_path / 'cache'}", "data.num_workers=0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "perception.json").read_text())
    assert set(report["val"]) == {"gender", "age", "height", "build", "skin", "hair_style", "hair_colour", "beard",
                                  "upper_type", "upper_colour", "lower_type", "lower_colour"}
    assert all(0 <= v["accuracy"] <= 100 and 0 < v["chance"] <= 100 for v in report["val"].values())
    encoder = build_image_encoder(EncoderConfig(path=str(out)), (128, 64))  # strict loading: every tensor fits
    if arch == "vit":
        assert encoder.config.hidden_size == 64 and encoder.config.num_hidden_layers == 4  # synthetic_cc.yaml's ViT
    else:  # its feature as wide as synthetic_cc.yaml's text encoder
        assert encoder.config.model_type == arch and feature_width(encoder) == 64
    ranker = report["perceived_ranker"]  # the attribute ranker on the encoder's perception, test split
    assert set(ranker) == {"standard", "clothing_change"}
    assert all(0 <= m["R1"] <= 100 and 0 < m["oracle_R1"] <= 100 for m in ranker.values())
    probes = report["test_probes"]  # its probes' accuracy on the test images, each identity fact the captions name
    assert set(probes) == {"gender", "age", "height", "build", "skin", "hair_style", "hair_colour", "beard"}
    assert all(0 <= m["accuracy"] <= 100 and 0 < m["chance"] <= 100 for m in probes.values())
    again = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_perception.py"), "--ranker-only", "--out",
                            str(out), f"data.root={synth_root}", f"data.cache_dir={tmp_path / 'cache'}"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    again_report = json.loads((out / "perception.json").read_text())
    assert again_report["perceived_ranker"] == ranker and again_report["test_probes"] == probes  # the saved encoder's


def test_a_dataset_without_ground_truth_is_one_line(tmp_path: Path) -> None:
    from reid.data.synth import generate

    root = tmp_path / "cuhk"
    generate(root, num_ids=4, seed=1, image_size=(128, 64))
    (root / "synth_factors.json").unlink()
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_perception.py"), "--out", str(tmp_path / "vit"),
                           f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {root}: no synth_factors.json; the facts to learn come from a reid-synth dataset"]
    assert not (tmp_path / "vit").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_a_cuda_device_on_a_machine_without_one_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "pretrain_perception.py"), "--device", "cuda",
                           "--out", str(tmp_path / "vit")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --device cuda: this torch sees no CUDA device"]
    assert not (tmp_path / "vit").exists()
