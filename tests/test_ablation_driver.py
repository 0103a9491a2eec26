"""bench/ablation.py, the driver of the clothing-change benchmark: drivers started side by side (one
per seed, as docs/ablation.md runs them) train a missing perceiving encoder once, not once each."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A stand-in for bench/pretrain_perception.py (minutes): counts its runs, takes a second, then
# saves what the driver looks for (config.json)
FAKE_PRETRAIN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    with open(out.parent / "runs.txt", "a") as f:
        f.write("ran\\n")
    time.sleep(1.0)
    out.mkdir()
    (out / "config.json").write_text("{}")
""")

DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {bench!r})
    from pathlib import Path
    from ablation import pretrain_once
    encoder = Path({encoder!r})
    ok = pretrain_once(encoder, [sys.executable, {fake!r}, str(encoder)], "a fake encoder")
    sys.exit(0 if ok else 1)
""")


def test_drivers_started_together_train_a_missing_encoder_once(tmp_path: Path) -> None:
    fake = tmp_path / "fake_pretrain.py"
    fake.write_text(FAKE_PRETRAIN)
    encoder = tmp_path / "encoders" / "vit"
    driver = DRIVER.format(bench=str(REPO / "bench"), encoder=str(encoder), fake=str(fake))
    procs = [subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert (tmp_path / "encoders" / "runs.txt").read_text() == "ran\n"  # trained once
    assert sum("training a fake encoder into" in o for o in outputs) == 1, outputs
    assert (encoder / "config.json").is_file()


def test_a_failed_pretraining_is_reported_and_the_next_driver_retries(tmp_path: Path) -> None:
    failing = tmp_path / "failing.py"
    failing.write_text("import sys; sys.exit(3)\n")
    encoder = tmp_path / "vit"
    driver = DRIVER.format(bench=str(REPO / "bench"), encoder=str(encoder), fake=str(failing))
    assert subprocess.run([sys.executable, "-c", driver], capture_output=True).returncode == 1
    fake = tmp_path / "fake_pretrain.py"
    fake.write_text(FAKE_PRETRAIN)
    driver = DRIVER.format(bench=str(REPO / "bench"), encoder=str(encoder), fake=str(fake))
    assert subprocess.run([sys.executable, "-c", driver], capture_output=True).returncode == 0
    assert (encoder / "config.json").is_file()


def test_set_overrides_reach_every_training_run_after_the_variants(tmp_path: Path, monkeypatch) -> None:
    """``--set`` overrides follow the variant's in the training command, also of the base run an
    ``*_erased`` variant trains first. The entry points are recorded, not run (each is minutes and
    tested on its own): the stand-in writes the files each would leave."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import ablation
    finally:
        sys.path.remove(str(REPO / "bench"))
    calls: list[list[str]] = []

    def fake_accelerate(args: list[str], log: Path) -> None:
        calls.append(args)
        value = dict(a.split("=", 1) for a in args if "=" in a)
        if args[0] == "launch/train.py":
            best = Path(value["train.output_dir"]) / value["train.run_name"] / "best"
        elif args[0] == "launch/erase_clothing.py":
            best = Path(args[args.index("--out") + 1])
        else:
            Path(args[args.index("--json") + 1]).parent.mkdir(parents=True, exist_ok=True)
            Path(args[args.index("--json") + 1]).write_text("{}")
            return
        best.mkdir(parents=True)
        (best / "reid_model.json").write_text("{}")

    monkeypatch.setattr(ablation, "accelerate", fake_accelerate)
    variant = "perceiving5k_wide_cloth_detached_eraser_frozen_erased32"
    ablation.run_one(tmp_path, tmp_path / "cc.yaml", variant, 1, False, ["train.epochs=24"])
    train, = [c for c in calls if c[0] == "launch/train.py"]
    base_overrides = ablation.VARIANTS["perceiving5k_wide_cloth_detached_eraser_frozen"][0]
    assert train[-len(base_overrides) - 1:] == [*base_overrides, "train.epochs=24"]
    assert "train.run_name=perceiving5k_wide_cloth_detached_eraser_frozen-s1" in train and "train.seed=1" in train
    assert [c[0] for c in calls] == ["launch/train.py", "launch/evaluate.py", "launch/erase_clothing.py", "launch/evaluate.py"]
    assert calls[2][calls[2].index("--rank") + 1] == "32"
