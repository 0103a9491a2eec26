"""bench/device_check.py: the GPU check's command lines are well formed, and its --dry-run runs every
stage on the CPU, so that the one call on a lent GPU does not fail on a typo."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ANCHOR = REPO.parent / "shared" / "bench" / "gpu_anchor.py"  # beside the checkout; absent in a bare clone


def load_module():
    spec = importlib.util.spec_from_file_location("device_check", REPO / "bench" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_command_lines_name_files_that_exist(tmp_path):
    dc = load_module()
    args = argparse.Namespace(dry_run=False, wheels=None, anchor=None, work=tmp_path,
                              anchor_variants="seed_literal")
    for stage in dc.STAGES:
        commands = dc.stage_commands(stage, args, tmp_path)
        if isinstance(commands, str):  # skipped, with a reason
            assert stage in ("wheels", "anchor", "clip") and commands
            continue
        for cmd in commands:
            for token in cmd:
                if token.endswith((".py", ".yaml", ".json")) and not token.startswith(str(tmp_path)):
                    assert Path(token).is_file(), f"{stage}: {token}"
            if "--config_file" in cmd:
                assert "--cpu" not in cmd


def test_unknown_stage_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "device_check.py"), "--out", str(tmp_path),
                           "--stages", "env,trian"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --stages: unknown stage 'trian' (stages: "
                                                "wheels, env, anchor, throughput, train, zero2, clip, metrics, eval)"]


@pytest.mark.slow
def test_dry_run_runs_every_stage_on_cpu(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "bench" / "device_check.py"), "--dry-run", "--out", str(out),
           "--work", str(tmp_path / "work"), "--wheels", str(tmp_path / "no-wheels"),
           "--stages", "wheels,env,anchor,throughput,train,zero2,clip,metrics,eval"]
    if ANCHOR.is_file():
        cmd += ["--anchor", str(ANCHOR), "--anchor-variants", "seed_literal,bf16_dynamic"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    status = {s["stage"]: s["status"] for s in summary["stages"]}
    assert status["wheels"] == "skipped"
    for stage in ("env", "throughput", "train", "zero2", "clip", "metrics", "eval"):
        assert status[stage] == "ok", (stage, (out / f"{stage}.log").read_text()[-2000:])
    assert status["anchor"] == ("ok" if ANCHOR.is_file() else "skipped")
    assert [r["variant"] for r in summary["throughput"]["runs"]] == ["bf16"]
    assert summary["train_result"].startswith("val (best at step 3") and "clothing-invariant" in summary["train_result"]
    assert summary["zero2_result"].startswith("val (best at step 3")
    assert summary["clip_result"].startswith("val (best at step 3")
    assert "| throughput | bf16 |" in (out / "summary.md").read_text()
    eval_log = (out / "eval.log").read_text()
    assert "standard ranking" in eval_log and "clothing-change ranking" in eval_log
