"""bench/fact_visibility.py: a CNN's accuracy on every drawn fact beside its chance rate, read from
the val split's ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from reid.oracle import identity_values

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # trains an epoch of the CNN in a subprocess
def test_every_fact_is_reported_beside_its_chance_rate(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "visibility.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "fact_visibility.py"), "--epochs", "1",
                           "--batch-size", "16", "--json", str(out), f"data.root={synth_root}",
                           f"data.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())["val"]
    factors = json.loads((synth_root / "synth_factors.json").read_text())
    val = [e for e in factors.values() if e["split"] == "val"]
    truth = {f: [identity_values(e)[f] for e in val] for f in ("gender", "hair_style", "beard")}
    truth["upper_colour"] = [str(e["clothing"]["upper_colour"]) for e in val]
    for fact, values in truth.items():  # chance: the majority value's share of the val images
        assert report[fact]["chance"] == round(100 * max(Counter(values).values()) / len(values), 1), fact
    assert set(report) == {"gender", "age", "height", "build", "skin", "hair_style", "hair_colour", "beard",
                           "upper_type", "upper_colour", "lower_type", "lower_colour"}
    assert all(0 <= v["accuracy"] <= 100 for v in report.values())
    assert f"hair_style    val accuracy {report['hair_style']['accuracy']:5.1f}" in proc.stdout


def test_a_dataset_without_ground_truth_is_one_line(tmp_path: Path) -> None:
    from reid.data.synth import generate

    root = tmp_path / "cuhk"
    generate(root, num_ids=4, seed=1, image_size=(128, 64))
    (root / "synth_factors.json").unlink()
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "fact_visibility.py"), f"data.root={root}",
                           f"data.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {root}: no synth_factors.json; the facts to read come from a reid-synth dataset"]
