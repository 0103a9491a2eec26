"""`accelerate launch launch/train.py` end to end on a small synthetic dataset (1 CPU process):
TensorBoard tags read back from the event files, the run's files, the export, faults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_launch

pytestmark = pytest.mark.slow

TRAIN = str(REPO / "launch" / "train.py")
TERMS = ("info_nce", "cls", "bio", "cloth", "cloth_adv", "cloth_match", "decouple")


def args(tmp: Path, root: Path, name: str, *extra: str) -> list[str]:
    return [TRAIN, f"data.root={root}", f"data.cache_dir={tmp / 'cache'}", "data.num_workers=1",
            "data.batch_size=16", f"train.output_dir={tmp / 'runs'}", f"train.run_name={name}",
            "train.progress=false", *extra]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, synth_root):
    tmp = tmp_path_factory.mktemp("e2e")
    proc = run_launch(args(tmp, synth_root, "short", "train.epochs=2", "train.log_every=2", "train.eval_every=1",
                           "disentangle.alpha.per=epoch"))  # alpha steps within the 2 epochs
    return tmp, tmp / "runs" / "short", proc


def test_run_prints_table_and_leaves_its_files(short_run):
    tmp, run, proc = short_run
    assert "val (best at step " in proc.stdout and f"run directory:  {run}" in proc.stdout
    assert "cpu: 1 thread per process (train.cpu_threads=1; 0 = the usable cores)" in proc.stderr  # the default
    assert (run / "config.yaml").is_file() and (run / "log.jsonl").is_file()
    assert (run / "best" / "reid_model.json").is_file() and (run / "final" / "reid_model.json").is_file()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints and all(name.startswith("step_") for name in checkpoints)  # no .tmp left


def test_tensorboard_has_every_tag(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = short_run
    assert [p.name for p in (run / "tensorboard").iterdir()] == ["short"]  # TensorBoard names the run "short"
    events = EventAccumulator(str(run / "tensorboard" / "short"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # numbered groups: losses and validation first (TensorBoard sorts the groups by name)
    expected = {f"1_loss/{t}" for t in TERMS} | {f"3_loss_weighted/{t}" for t in TERMS} | {
        "1_loss/total", "5_optim/grl/alpha", "5_optim/temperature", "5_optim/grad_norm",
        "4_diag/mean_abs_cos_id_cloth", "4_diag/cls_acc", "4_diag/adv_acc", "6_progress/perf/samples_per_s",
        "6_progress/epoch", "6_progress/samples",
    } | {f"2_val/{protocol}/{mode}/{m}" for protocol in ("standard", "clothing_change")
         for mode in ("standard", "clothing_invariant", "oracle") for m in ("R1", "R5", "R10", "mAP", "mINP")}
    assert expected <= tags, sorted(expected - tags)
    lrs = {t for t in tags if t.startswith("5_optim/lr")}
    assert lrs in ({"5_optim/lr"}, {"5_optim/lr/encoders", "5_optim/lr/heads"}), lrs  # one curve per distinct lr
    assert not any(t.endswith("num_skipped") for t in tags) and "4_diag/xcorr_id_cloth" not in tags  # duplicates
    alpha = [e.value for e in events.Scalars("5_optim/grl/alpha")]
    assert alpha[0] == pytest.approx(0.1) and alpha[-1] == pytest.approx(0.12)  # min(1, 0.1 + 0.02 epoch)
    assert len(events.Scalars("2_val/standard/standard/R1")) == 2  # evaluated at the end of each epoch
    weighted = events.Scalars("3_loss_weighted/cloth_match")[0].value
    assert weighted == pytest.approx(0.5 * events.Scalars("1_loss/cloth_match")[0].value, rel=1e-5)
    assert all(0 <= e.value <= 100 for e in events.Scalars("4_diag/cls_acc"))  # percent, like val


def test_export_loads_with_plain_safetensors_and_with_reid(short_run):
    from reid.data import keys
    from reid.export import load_exported

    _, run, _ = short_run
    export = run / "final"
    index = json.loads((export / "model.safetensors.index.json").read_text())
    state = {}
    for shard in sorted(set(index["weight_map"].values())):
        state.update(load_file(str(export / shard)))
    assert set(index["weight_map"]) == set(state)
    assert (export / "tokenizer" / "tokenizer.json").is_file() or (export / "tokenizer" / "vocab.txt").is_file()
    model, tokenizer, cfg, meta = load_exported(export)
    own = model.state_dict()
    for name, tensor in state.items():
        torch.testing.assert_close(own[name], tensor, msg=name)
    ids = tokenizer(["a woman in a red coat"], return_tensors="pt")
    with torch.no_grad():
        text = model({keys.INPUT_IDS: ids["input_ids"], keys.ATTENTION_MASK: ids["attention_mask"]})["text_embeds"]
        image = model({keys.IMAGES: torch.zeros(2, 3, *meta["image_size"])})["image_embeds"]
    assert text.shape == (1, 256) and image.shape == (2, 256)
    assert torch.allclose(text.norm(dim=-1), torch.ones(1))


def refused_resume(tmp: Path, root: Path, *overrides: str) -> str:
    """Resume the short run with ``overrides``: it must fail with exactly one ``error:`` line (returned)."""
    proc = run_launch(args(tmp, root, "short", "train.epochs=3", *overrides) + ["--resume", "latest"], check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_resume_into_another_model_shape_names_the_tensor(short_run, synth_root):
    tmp, run, _ = short_run
    line = refused_resume(tmp, synth_root, "model.shared_dim=128")
    assert "tensor 'shared_mlp.weight' has shape [512, 64] in the checkpoint but [128, 64]" in line


def test_resume_takes_the_optimizer_settings_of_its_config_and_refuses_other_groups(short_run, synth_root):
    """A loaded optimizer state carries the checkpoint's learning rates: an ``optim.lr`` given on
    resume is put back (and said); other parameter groups (``optim.image_lr`` switched on) are one line."""
    tmp, run, _ = short_run
    line = refused_resume(tmp, synth_root, "optim.image_lr=1e-5")
    assert "parameter groups are" in line and "(optim.image_lr set in one and not the other?)" in line

    shutil.copytree(run, tmp / "runs" / "lower_lr")
    proc = run_launch(args(tmp, synth_root, "lower_lr", "train.epochs=3", "train.log_every=1", "optim.lr=2e-5",
                           "optim.head_lr=2e-4") + ["--resume", "latest"])
    said = [line for line in proc.stdout.splitlines() if line.startswith("optimizer settings from this run's config")]
    assert len(said) == 1 and "encoders base_lr 0.001 -> 2e-05" in said[0] and "heads base_lr 0.001 -> 0.0002" in said[0], \
        proc.stdout[-3000:]
    train = [json.loads(line) for line in (tmp / "runs" / "lower_lr" / "log.jsonl").read_text().splitlines()]
    resumed = [r for r in train if r["kind"] == "train" and r["step"] > 0][-1]
    assert resumed["lr/encoders"] == pytest.approx(resumed["lr/heads"] / 10)  # the checkpoint's were equal


def test_bad_config_key_is_one_line(tmp_path, synth_root):
    proc = run_launch(args(tmp_path, synth_root, "bad", "model.fusion.num_head=3"), check=False)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: model.fusion.num_head: unknown key (did you mean 'num_heads'?) (command-line override)"]
    assert "Traceback" not in proc.stderr.split("error:")[0]  # nothing of ours before it


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path, synth_root):
    # A huge learning rate blows the weights up after one step; every later loss is non-finite.
    proc = run_launch(args(tmp_path, synth_root, "nan", "optim.lr=1e30", "optim.head_lr=1e30", "train.max_bad_steps=3",
                           "train.epochs=3"), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert out.count("non-finite loss") >= 3 and "batch skipped" in out
    assert "error: 3 non-finite losses in a row at step" in proc.stderr


def test_a_regular_pip_install_trains_with_a_deepspeed_config_from_any_directory(tmp_path, synth_root):
    """`pip install .` (not -e): reid lives in site-packages, away from the checkout, and the
    Accelerate config names ds_configs/zero2.json relative to the checkout. Launched from another
    working directory with the checkout's launch/train.py, the 2-process ZeRO-2 run must find the
    JSON and import the installed reid (a regular install is simulated with `pip install --target`
    into a fresh directory put first on PYTHONPATH: the same files a venv's site-packages would get)."""
    import subprocess
    import sys

    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    shutil.copytree(REPO / "reid", source / "reid", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    import importlib.util

    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]  # faster
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *isolation,
                          "--target", str(site), str(source)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert (site / "reid" / "engine" / "accel.py").is_file() and not (site / "reid" / "ds_configs").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run([sys.executable, "-c", "import reid; print(reid.__file__)"], cwd=elsewhere,
                           env={**__import__("os").environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert probe.stdout.strip().startswith(str(site)), probe.stdout + probe.stderr
    proc = run_launch(args(tmp_path, synth_root, "installed", "train.epochs=1", "data.batch_size=8"),
                      accel_config="cpu_zero2", env={"PYTHONPATH": str(site)}, cwd=elsewhere)
    assert "val (best at step " in proc.stdout
    assert (tmp_path / "runs" / "installed" / "final" / "reid_model.json").is_file()
