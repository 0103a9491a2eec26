"""The faults a long run meets, through the real `accelerate launch` (1 CPU process unless said):
damaged checkpoints, a full disk (a real tmpfs; without root, a file-size limit), saves that
coincide, Ctrl-C and signals to the launcher, a bad --resume path. Each row of the README's fault
table is checked here, and every resume is compared with the uninterrupted run: the same final
weights. (A different number of processes on resume: tests/test_elastic.py.)"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reid.engine.checkpoint import read_marker
from reid.engine.resume import damage
from tests.conftest import REPO, accelerate_bin, free_port, remount, run_launch
from tests.processes import adopting_orphans, alive, wait_for_child, wait_status

pytestmark = pytest.mark.slow

TRAIN = str(REPO / "launch" / "train.py")
ONE_PROCESS = ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def args(work: Path, root: Path, name: str, *extra: str, output: Path | None = None) -> list[str]:
    """2 epochs of 11 steps, a checkpoint every 5 steps and at each epoch end, dropout on (so the RNG
    state matters: a resume that lost it ends with other weights)."""
    return [TRAIN, f"data.root={root}", f"data.cache_dir={work / 'cache'}", "data.num_workers=0", "data.batch_size=16",
            f"train.output_dir={output or work / 'runs'}", f"train.run_name={name}", "train.progress=false",
            "train.log_every=1", "train.epochs=2", "train.save_every=5", "train.keep_last=3", "train.eval_every=0", *extra]


def weights(export: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted(export.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def assert_same_weights(export: Path, reference: Path) -> None:
    a, b = weights(reference), weights(export)
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)


def errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


LAUNCHER_TRACEBACK = f'Traceback (most recent call last):\n  File "{accelerate_bin()}"'


def ours_before_the_launchers(stderr: str) -> str:
    """What the trainer wrote before `accelerate launch`'s own report of a non-zero exit."""
    return stderr.split(LAUNCHER_TRACEBACK)[0]


def tracebacks_not_the_launchers(out: str) -> int:
    """Tracebacks of the trainer (the launcher's own report of a signal or an exit status aside)."""
    return out.count("Traceback (most recent call last):") - out.count(LAUNCHER_TRACEBACK)


def checkpoint_records(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "checkpoint"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, synth_root) -> tuple[Path, Path]:
    return tmp_path_factory.mktemp("faults"), synth_root


@pytest.fixture(scope="module")
def whole(work) -> Path:
    """The uninterrupted run every resumed run is compared with."""
    tmp, root = work
    run_launch(args(tmp, root, "whole"))
    return tmp / "runs" / "whole"


def copy_checkpoints(whole: Path, run: Path) -> Path:
    shutil.copytree(whole / "checkpoints", run / "checkpoints")
    return run / "checkpoints"


# ------------------------------------------------------------------ damaged checkpoints

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


DAMAGE = {
    "optimizer.bin truncated": (lambda c: _truncate(c / "optimizer.bin"), "optimizer.bin has"),
    "model.safetensors truncated": (lambda c: _truncate(c / "model.safetensors"), "model.safetensors has"),
    "custom state truncated": (lambda c: _truncate(c / "custom_checkpoint_0.pkl"), "custom_checkpoint_0.pkl has"),
    "model.safetensors deleted": (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
    "RNG state truncated": (lambda c: _truncate(c / "random_states_0.pkl"), "random_states_0.pkl has"),
    "RNG state deleted": (lambda c: (c / "random_states_0.pkl").unlink(), "random_states_0.pkl is missing"),
    "marker deleted": (lambda c: (c / "reid_checkpoint.json").unlink(), "no readable reid_checkpoint.json"),
}


@pytest.mark.parametrize("fault", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_resumes_exactly(work, whole, fault):
    tmp, root = work
    name = "damaged-" + fault.replace(" ", "-").replace(".", "")
    checkpoints = copy_checkpoints(whole, tmp / "runs" / name)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000015", "step_00000020", "step_00000022"]
    damage_fn, named = DAMAGE[fault]
    damage_fn(checkpoints / "step_00000022")
    proc = run_launch(args(tmp, root, name, "train.epochs=3") + ["--resume", "latest"])
    out = proc.stdout + proc.stderr
    warnings = [line for line in out.splitlines() if line.startswith("warning: checkpoint")]
    assert warnings == [f"warning: checkpoint {checkpoints / 'step_00000022'} is damaged: " + warnings[0].split(": ", 2)[2]]
    assert named in warnings[0] and warnings[0].endswith("; trying the previous one")
    assert f"resumed from {checkpoints / 'step_00000020'} at step 20" in out
    assert "Traceback" not in out


def test_every_damaged_row_resumes_to_the_uninterrupted_weights(work, whole):
    """One of the rows above, run to the end of the same schedule: the fallback is an exact resume
    (a lost RNG state used to end with 110 of 114 tensors different)."""
    tmp, root = work
    checkpoints = copy_checkpoints(whole, tmp / "runs" / "rng-lost")
    (checkpoints / "step_00000022" / "random_states_0.pkl").unlink()
    (checkpoints / "step_00000020" / "random_states_0.pkl").write_bytes(b"")
    proc = run_launch(args(tmp, root, "rng-lost") + ["--resume", "latest"])
    assert f"resumed from {checkpoints / 'step_00000015'} at step 15" in proc.stdout
    assert_same_weights(tmp / "runs" / "rng-lost" / "final", whole / "final")


@pytest.mark.parametrize("target", ["nonexistent", "damaged checkpoint", "run directory"])
def test_a_bad_resume_path_is_one_line_and_creates_nothing(work, whole, target):
    tmp, root = work
    damaged = copy_checkpoints(whole, tmp / "bad-source" / target.replace(" ", "-")) / "step_00000022"
    _truncate(damaged / "optimizer.bin")
    path, expected = {
        "nonexistent": (tmp / "nonexistent", f"error: {tmp / 'nonexistent'}: no such checkpoint directory"),
        "damaged checkpoint": (damaged, f"error: checkpoint {damaged} is damaged: optimizer.bin has"),
        "run directory": (whole, f"error: {whole}: a run directory, not a checkpoint"),
    }[target]
    output = tmp / f"out-{target.replace(' ', '-')}"
    proc = run_launch(args(tmp, root, "new-run", output=output) + ["--resume", str(path)], check=False)
    assert proc.returncode != 0
    assert len(errors(proc)) == 1 and errors(proc)[0].startswith(expected), proc.stderr[-2000:]
    assert "Traceback" not in ours_before_the_launchers(proc.stderr)
    assert not output.exists()  # no run folder, no config.yaml


# ------------------------------------------------------------------ one save per step

def test_a_step_that_is_both_an_epoch_end_and_a_save_point_is_saved_once(work):
    """Steps per epoch 11 = train.save_every; and train.max_steps=16 ends the run mid-epoch on a save
    point (16 = 2 x 8): each such step is saved once, with the state after the epoch end."""
    tmp, root = work
    run_launch(args(tmp, root, "coincide", "train.save_every=11", "train.keep_last=5"))
    run = tmp / "runs" / "coincide"
    assert checkpoint_records(run) == [11, 22]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000011", "step_00000022"]
    marker = read_marker(run / "checkpoints" / "step_00000011")
    assert (marker["epoch"], marker["sample_in_epoch"]) == (1, 0)  # saved after the epoch's end
    run_launch(args(tmp, root, "max-steps", "train.save_every=8", "train.max_steps=16", "train.keep_last=5"))
    assert checkpoint_records(tmp / "runs" / "max-steps") == [8, 11, 16]


# ------------------------------------------------------------------ a full disk

def test_a_full_disk_before_a_save_stops_the_run_and_a_resume_after_freeing_space_is_exact(work, whole, tmpfs):
    """12 MB: the first checkpoint (~8 MB) fits; the second does not, which is known before writing it."""
    tmp, root = work
    disk = tmpfs("12m")
    proc = run_launch(args(tmp, root, "full", "train.keep_last=1", output=disk), check=False)
    assert proc.returncode != 0
    checkpoints = disk / "full" / "checkpoints"
    assert len(errors(proc)) == 1, proc.stderr[-3000:]
    assert errors(proc)[0].startswith("error: checkpoint step_00000010 not written: ")
    assert f"free on the disk of {checkpoints}, a checkpoint needs about" in errors(proc)[0]
    assert "train.run_name=full" in errors(proc)[0]
    assert "Traceback" not in ours_before_the_launchers(proc.stderr)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_00000005"]  # no .tmp-*, the complete one kept
    assert damage(checkpoints / "step_00000005", read_marker(checkpoints / "step_00000005")) is None
    proc = run_launch(args(tmp, root, "full", "train.keep_last=1", output=disk) + ["--resume", "latest"], check=False)
    assert proc.returncode != 0 and "error: " in errors(proc)[0] and "free on the disk of" in errors(proc)[0]
    remount(disk, "64m")
    run_launch(args(tmp, root, "full", "train.keep_last=1", output=disk) + ["--resume", "latest"])
    assert_same_weights(disk / "full" / "final", whole / "final")


def _fill_during_the_save(work, output: Path, name: str, preexec=None) -> subprocess.CompletedProcess:
    tmp, root = work
    cmd = [accelerate_bin(), "launch", *ONE_PROCESS, *args(tmp, root, name, output=output)]
    return subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                          timeout=600, preexec_fn=preexec)


def _check_failed_save(proc: subprocess.CompletedProcess, checkpoints: Path, reason: str) -> None:
    assert proc.returncode != 0
    assert len(errors(proc)) == 1, proc.stderr[-3000:]
    assert errors(proc)[0].startswith(f"error: checkpoint step_00000005 not written: {reason} under {checkpoints}")
    assert "the partial save was removed, complete checkpoints are kept" in errors(proc)[0]
    assert "Traceback" not in ours_before_the_launchers(proc.stderr)
    assert list(checkpoints.iterdir()) == []  # the .tmp-step_00000005 is gone


def test_a_disk_that_fills_during_a_save(work, whole, tmpfs):
    """6 MB: the weights (2.7 MB) are written, the optimizer state (5.4 MB) is not."""
    tmp, root = work
    disk = tmpfs("6m")
    proc = _fill_during_the_save(work, disk, "fills")
    _check_failed_save(proc, disk / "fills" / "checkpoints", "no space left on the disk")
    remount(disk, "64m")
    proc = run_launch(args(tmp, root, "fills", output=disk) + ["--resume", "latest"])
    assert "resume: no checkpoint yet" in proc.stdout
    assert_same_weights(disk / "fills" / "final", whole / "final")


@pytest.mark.parametrize("accel", ["cpu_ddp", "cpu_zero2"])
def test_a_full_disk_with_two_processes(work, tmpfs, accel):
    """2 processes, 6 MB. DDP: the main process writes the state and the ranks agree on the outcome:
    one line, the .tmp removed. ZeRO-2: every rank writes its own shard inside DeepSpeed's save, so a
    rank that fails says so itself (each that fails: the same line) and leaves the .tmp to the next
    save. Either way no rank waits for ever, and a resume after freeing space runs to the end."""
    tmp, root = work
    disk = tmpfs("6m")
    name = f"full-{accel}"
    start = time.time()
    proc = run_launch(args(tmp, root, name, "data.batch_size=8", output=disk), accel_config=accel, check=False, timeout=300)
    assert proc.returncode != 0 and time.time() - start < 240
    lines = errors(proc)
    assert lines and len(set(lines)) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: checkpoint step_00000005 not written: no space left on the disk under {disk / name}")
    assert tracebacks_not_the_launchers(proc.stdout + proc.stderr) == 0, proc.stderr[-3000:]
    checkpoints = disk / name / "checkpoints"
    if accel == "cpu_ddp":
        assert len(lines) == 1 and list(checkpoints.iterdir()) == []
    remount(disk, "96m")
    run_launch(args(tmp, root, name, "data.batch_size=8", output=disk) + ["--resume", "latest"], accel_config=accel)
    assert (disk / name / "final").is_dir() and not list(checkpoints.glob(".tmp-*"))


def test_a_write_over_the_file_size_limit(work):
    """Where no tmpfs can be mounted (no root), a size-limited write stands in for the full disk:
    `ulimit -f` of 4 MB, which the 5.4 MB optimizer state exceeds."""
    tmp, _ = work

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    proc = _fill_during_the_save(work, tmp / "limited", "limited", preexec=limit)
    _check_failed_save(proc, tmp / "limited" / "limited" / "checkpoints", r"the file size limit (ulimit -f) was reached")


# ------------------------------------------------------------------ a closed pipe

def test_the_trainer_stops_with_a_checkpoint_when_its_output_pipe_closes(work):
    """`accelerate launch ... | head`, head gone: the first line the trainer prints (the epoch-1
    evaluation) meets the closed pipe; the run stops at the next step boundary with a checkpoint,
    quietly, instead of dying with the work since the last one."""
    tmp, root = work
    name = "pipe"
    cmd = [accelerate_bin(), "launch", *ONE_PROCESS, *args(tmp, root, name, "train.epochs=3", "train.eval_every=1")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    proc.stdout.close()
    _, err = proc.communicate(timeout=600)
    run = tmp / "runs" / name
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert checkpoint_records(run) == [5, 10, 11, 12]  # 11: the epoch end; 12: the stop
    assert not (run / "final").exists()


# ------------------------------------------------------------------ signals

def _start(work, name: str, *extra: str) -> subprocess.Popen:
    """A 1-process launch in its own process group (as a terminal's foreground job is)."""
    tmp, root = work
    cmd = [accelerate_bin(), "launch", *ONE_PROCESS, *args(tmp, root, name, *extra)]
    log = open(tmp / f"{name}.out", "w")
    return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _steps_logged(run: Path) -> int:
    path = run / "log.jsonl"
    return sum('"train"' in line for line in path.read_text().splitlines()) if path.exists() else 0


def _wait_for_step(run: Path, at_least: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = _steps_logged(run)
        if steps >= at_least:
            return steps
        assert proc.poll() is None, "the run ended early"
        time.sleep(0.02)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.parametrize("how", ["Ctrl-C to the process group", "SIGTERM to the launcher", "SIGKILL to the launcher",
                                 "SIGINT to the launcher"])
def test_a_stop_by_signal_checkpoints_and_exits_0_and_resumes_exactly(work, whole, how):
    """A 1-process `accelerate launch` dies at once on these (its own KeyboardInterrupt, or the
    default action): the trainer hears of it (Ctrl-C itself, or the launcher's exit), saves at the
    next step boundary, prints the resume line and exits 0 — it does not train on to the end. With
    DataLoader workers, which must survive the Ctrl-C long enough to finish the step."""
    tmp, root = work
    name = "sig-" + how.split()[0].lower().replace("-", "")
    run = tmp / "runs" / name
    with adopting_orphans():
        launcher = _start(work, name, "data.num_workers=1")
        trainer = wait_for_child(launcher.pid, TRAIN)
        _wait_for_step(run, 3, launcher)
        # Hold the trainer until the launcher is gone: on a loaded machine a launcher that dies of
        # KeyboardInterrupt can take longer to exit than the 19 tiny steps left take to run.
        os.kill(trainer, signal.SIGSTOP)
        try:
            if how.startswith("Ctrl-C"):
                os.killpg(launcher.pid, signal.SIGINT)
            else:
                launcher.send_signal({"SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL, "SIGINT": signal.SIGINT}[how.split()[0]])
            launcher.wait(timeout=60)
        finally:
            os.kill(trainer, signal.SIGCONT)
        status = wait_status(trainer, timeout=120)
    out = (tmp / f"{name}.out").read_text()
    assert status == 0, out[-3000:]
    reason = "SIGINT" if how.startswith("Ctrl-C") else "launcher exited"  # a signal to the launcher alone
    saved = int(out.split(f"stop requested ({reason}): checkpoint saved at step ")[1].split()[0])
    assert f"stopped at step {saved}: resume with --resume latest train.run_name={name}" in out
    assert not (run / "final").exists() and saved < 22  # it did not train on to the end
    marker = read_marker(run / "checkpoints" / f"step_{saved:08d}")
    assert marker is not None and damage(run / "checkpoints" / f"step_{saved:08d}", marker) is None
    assert tracebacks_not_the_launchers(out) == 0, out[-3000:]
    run_launch(args(tmp, root, name) + ["--resume", "latest"])  # the same schedule, continued exactly
    assert_same_weights(run / "final", whole / "final")


def test_a_second_ctrl_c_aborts_at_once(work):
    """The first Ctrl-C lands just after a step boundary, so a whole window of 40 micro-batches of
    512x256 images lies ahead (seconds); once the 1-process launcher has died of it, the second
    Ctrl-C ends the trainer by SIGINT at once, without the checkpoint."""
    tmp, _ = work
    name = "abort"
    run = tmp / "runs" / name
    with adopting_orphans():
        launcher = _start(work, name, "data.batch_size=4", "train.grad_accum=40", "data.image_size=[512,256]",
                          "data.num_workers=1", "train.epochs=20")
        trainer = wait_for_child(launcher.pid, TRAIN)
        steps = _wait_for_step(run, 1, launcher)
        _wait_for_step(run, steps + 1, launcher)
        os.killpg(launcher.pid, signal.SIGINT)
        launcher.wait(timeout=30)  # so that the trainer is ours to wait for
        assert alive(trainer), "the trainer ended before the second Ctrl-C"
        sent = time.time()
        os.killpg(launcher.pid, signal.SIGINT)
        status = wait_status(trainer, timeout=30)
        took = time.time() - sent
    out = (tmp / f"{name}.out").read_text()
    assert status == -signal.SIGINT and took < 5, (status, took, out[-2000:])
    assert "Ctrl-C again aborts without one" in out and "checkpoint saved" not in out
    assert not list((run / "checkpoints").glob("step_*")) or all(
        damage(p, read_marker(p)) is None for p in (run / "checkpoints").glob("step_*"))


def test_ctrl_c_with_two_processes(work):
    """2 processes (DDP): torchrun's agent receives the Ctrl-C and passes it on to its workers (they
    run in sessions of their own); both stop at the same step and save one checkpoint."""
    tmp, root = work
    name = "two-procs"
    run = tmp / "runs" / name
    cmd = [accelerate_bin(), "launch", "--config_file", str(REPO / "accelerate_configs" / "cpu_ddp.yaml"),
           "--main_process_port", str(free_port()), *args(tmp, root, name, "data.batch_size=8")]
    with open(tmp / f"{name}.out", "w") as log:
        launcher = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
        _wait_for_step(run, 3, launcher)
        os.killpg(launcher.pid, signal.SIGINT)
        launcher.wait(timeout=120)
    out = (tmp / f"{name}.out").read_text()
    saved = int(out.split("stop requested (SIGINT): checkpoint saved at step ")[1].split()[0])
    assert out.count("checkpoint saved at step") == 1  # the main process speaks for both
    marker = read_marker(run / "checkpoints" / f"step_{saved:08d}")
    assert marker["world_size"] == 2 and damage(run / "checkpoints" / f"step_{saved:08d}", marker) is None
    assert not (run / "final").exists()
    assert tracebacks_not_the_launchers(out) == 0, out[-3000:]
