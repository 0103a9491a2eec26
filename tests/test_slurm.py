"""launch/slurm/train.sbatch against a real SLURM on this machine (../shared/slurm/start_slurm.sh,
two fake nodes on one host): a one-node job trains to the end, a two-node job trains with 2 ranks,
and USR1 (as `--signal=B:USR1@secs` sends it before the time limit) makes the job checkpoint,
requeue itself and finish with the same weights as an uninterrupted job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO

pytestmark = pytest.mark.slow

START = REPO.parent / "shared" / "slurm" / "start_slurm.sh"
SBATCH = REPO / "launch" / "slurm" / "train.sbatch"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory, synth_root):
    if os.geteuid() != 0 or not START.exists():
        pytest.skip("needs root and ../shared/slurm/start_slurm.sh (CI has both)")
    env = dict(os.environ, NNODES="2", CLEAN="1")
    subprocess.run(["bash", str(START), "start"], check=True, env=env, capture_output=True, timeout=300)
    work = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_CONF="/tmp/reid-slurm/etc/slurm.conf", PYTHONUNBUFFERED="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", REID_OUTPUT_DIR=str(work / "runs"))
    common = [f"data.root={synth_root}", f"data.cache_dir={work / 'cache'}", "data.num_workers=0",
              "data.batch_size=16", "train.progress=false", "train.log_every=1"]
    return work, env, common


def submit(slurm, nodes: int, name: str, *overrides: str) -> str:
    work, env, common = slurm
    out = subprocess.run(
        ["sbatch", "--parsable", f"--nodes={nodes}", f"--job-name={name}", f"--output={work}/%x-%j.out",
         str(SBATCH), *common, *overrides],
        cwd=REPO, env=env, check=True, capture_output=True, text=True,
    )
    return out.stdout.strip().split(";")[0]


def job_state(slurm, job: str) -> str:
    _, env, _ = slurm
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return next((f.split("=")[1] for f in out.split() if f.startswith("JobState=")), "UNKNOWN")


def wait_done(slurm, job: str, timeout: float = 600) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(slurm, job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(2)
    raise AssertionError(f"job {job} still {job_state(slurm, job)} after {timeout}s")


def job_log(slurm, name: str, job: str) -> str:
    return (slurm[0] / f"{name}-{job}.out").read_text()


def train_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"train"' in line]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted((run / "final").glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def test_one_node_job_trains_to_the_end(slurm):
    job = submit(slurm, 1, "one", "train.max_steps=10", "train.eval_every=0")
    state = wait_done(slurm, job)
    assert state == "COMPLETED", job_log(slurm, "one", job)[-3000:]
    run = slurm[0] / "runs" / f"one-{job}"
    assert (run / "final" / "model.safetensors.index.json").is_file()
    assert "val (best at step 10," in job_log(slurm, "one", job)


def test_two_node_job_trains_with_two_ranks(slurm):
    job = submit(slurm, 2, "two", "train.max_steps=4", "train.eval_every=0", "data.batch_size=8")
    state = wait_done(slurm, job)
    text = job_log(slurm, "two", job)
    assert state == "COMPLETED", text[-3000:]
    assert "2 node(s) x 1" in text
    run = slurm[0] / "runs" / f"two-{job}"
    markers = [json.loads(p.read_text()) for p in run.glob("checkpoints/*/reid_checkpoint.json")]
    assert markers and all(m["world_size"] == 2 for m in markers)
    assert text.count("val (best at step 4,") == 1  # the summary prints once, on the global main rank


def test_usr1_checkpoints_requeues_and_finishes_like_an_uninterrupted_job(slurm):
    steps = ("train.max_steps=120", "train.save_every=1000", "train.eval_every=0")
    whole = submit(slurm, 1, "whole", *steps)
    job = submit(slurm, 1, "preempted", *steps)
    run = slurm[0] / "runs" / f"preempted-{job}"
    deadline = time.time() + 300
    while time.time() < deadline and not ((run / "log.jsonl").exists() and train_log(run)):
        time.sleep(0.5)
    assert train_log(run), job_log(slurm, "preempted", job)[-3000:]
    _, env, _ = slurm
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=env, check=True)
    assert wait_done(slurm, job, timeout=900) == "COMPLETED"
    assert wait_done(slurm, whole, timeout=900) == "COMPLETED"

    text = job_log(slurm, "preempted", job)
    assert "USR1 received" in text and "requeueing job" in text and "restart 1" in text, text[-4000:]
    stopped = int(text.split("checkpoint saved at step ")[1].split()[0])
    assert 0 < stopped < 120
    assert f"resumed from {run / 'checkpoints'}" in text and f"at step {stopped}" in text
    a, b = final_weights(slurm[0] / "runs" / f"whole-{whole}"), final_weights(run)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)
