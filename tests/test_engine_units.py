"""Engine parts that need no process group: parameter groups, the lr schedule, the stop request, the
CPU thread count.
(Checkpoints: tests/test_checkpoints.py.)"""

import os
import signal

import pytest
import torch

from reid.config import OptimConfig
from reid.engine.accel import cpu_threads
from reid.engine.optim import apply_lr, build_optimizer, lr_factor, param_groups
from reid.engine.signals import StopRequest


class Toy(torch.nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.image_encoder = torch.nn.Sequential(torch.nn.Linear(3, width), torch.nn.LayerNorm(width))
        self.text_encoder = torch.nn.Linear(3, width)
        self.head = torch.nn.Linear(width, 2)
        self.scale = torch.nn.Parameter(torch.ones(1))


def test_cpu_threads_share_the_usable_cores_among_the_processes_on_the_node(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # e.g. a SLURM allocation of 8 cores
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads(0) == (8, "8 usable cores / 1 process on this node; train.cpu_threads sets it")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert cpu_threads(0)[0] == 2  # 8 // 3: never more threads than cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert cpu_threads(0) == (1, "8 usable cores / 16 processes on this node; train.cpu_threads sets it")
    assert cpu_threads(5) == (5, "train.cpu_threads=5; 0 = the usable cores")


def test_param_groups_split_encoders_heads_and_decay():
    groups = {g["name"]: g for g in param_groups(Toy(), OptimConfig(lr=1e-5, head_lr=1e-3, weight_decay=0.1))}
    assert set(groups) == {"encoders", "encoders_no_decay", "heads", "heads_no_decay"}
    assert groups["encoders"]["lr"] == 1e-5 and groups["heads"]["lr"] == 1e-3
    assert groups["heads_no_decay"]["weight_decay"] == 0.0 and groups["heads"]["weight_decay"] == 0.1
    assert all(p.ndim >= 2 for p in groups["encoders"]["params"])
    assert all(p.ndim <= 1 for g in ("encoders_no_decay", "heads_no_decay") for p in groups[g]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(list(Toy().parameters()))


def test_image_lr_puts_the_image_encoder_in_groups_of_its_own():
    toy, cfg = Toy(), OptimConfig(lr=1e-3, head_lr=1e-2, image_lr=1e-4)
    groups = {g["name"]: g for g in param_groups(toy, cfg)}
    assert set(groups) == {"encoders", "encoders_no_decay", "heads", "heads_no_decay", "image_encoder", "image_encoder_no_decay"}
    members = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert members["image_encoder"] | members["image_encoder_no_decay"] == {id(p) for p in toy.image_encoder.parameters()}
    assert members["encoders"] | members["encoders_no_decay"] == {id(p) for p in toy.text_encoder.parameters()}
    assert [groups[n]["lr"] for n in ("image_encoder", "image_encoder_no_decay", "encoders", "heads")] == [1e-4, 1e-4, 1e-3, 1e-2]
    assert groups["image_encoder"]["base_lr"] == 1e-4  # what the schedule scales
    # unset (0): the image encoder stays with the text encoder at optim.lr, the groups as before
    assert "image_encoder" not in {g["name"] for g in param_groups(Toy(), OptimConfig(lr=1e-3))}


def test_lr_warmup_then_cosine_to_floor():
    cfg = OptimConfig(warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, 20, cfg) for s in range(21)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))  # monotone decay
    assert factors[20] == pytest.approx(0.1)
    assert factors[12] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine


def test_apply_lr_sets_every_group():
    cfg = OptimConfig(lr=1e-5, head_lr=1e-3, warmup_steps=2)
    opt = build_optimizer(Toy(), cfg)
    lrs = apply_lr(opt, 0, 10, cfg)
    assert lrs["encoders"] == pytest.approx(0.5e-5) and lrs["heads"] == pytest.approx(0.5e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([lrs[g["name"]] for g in opt.param_groups])


def test_stop_request_by_signal_and_by_file(tmp_path):
    stop = StopRequest(tmp_path / "STOP").install()
    try:
        assert not stop.poll()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.poll() and stop.reason == "SIGUSR1"
    finally:
        stop.uninstall()
    stop = StopRequest(tmp_path / "STOP")
    (tmp_path / "STOP").touch()
    assert stop.poll() and "stop file" in stop.reason


def test_ctrl_c_asks_for_a_stop_and_a_second_one_gets_the_default_action():
    """The first SIGINT is a stop request; after it SIGINT and SIGTERM are the kernel's default
    (terminate) again, so a second Ctrl-C aborts even while Python is blocked in a collective.
    (Real processes receiving the second signal: tests/test_faults.py.)"""
    stop = StopRequest().install()
    try:
        assert signal.getsignal(signal.SIGINT) == stop._handle
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt
        assert stop.poll() and stop.reason == "SIGINT" and stop.interrupted
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGINT) == signal.default_int_handler


def test_a_second_sigterm_does_not_abort():
    """SLURM and torchrun may each send a SIGTERM: the second must not cost the checkpoint."""
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.poll() and stop.reason == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == stop._handle  # still ours
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL  # but Ctrl-C now aborts
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reason == "SIGTERM"
    finally:
        stop.uninstall()


def test_the_launchers_exit_is_a_stop_request():
    from reid.engine.signals import LAUNCHER_GONE, stop_with_launcher

    assert not stop_with_launcher()  # pytest is not a launcher: never armed under a plain parent
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), LAUNCHER_GONE)
        assert stop.poll() and stop.reason == "launcher exited" and not stop.interrupted
        assert signal.getsignal(signal.SIGTERM) == stop._handle
    finally:
        stop.uninstall()


def test_the_best_metrics_travel_in_the_checkpointed_state(tmp_path):
    """The summary after --resume prints the best step's metrics: they are part of TrainState, saved
    and loaded as Accelerate saves custom state (torch.save / torch.load with weights_only), and a
    checkpoint from before the field existed still loads."""
    import torch

    from reid.engine.state import TrainState

    state = TrainState(step=40, best_metric=31.5, best_step=30,
                       best_metrics={"standard/standard/R1": 31.5, "clothing_change/clothing_invariant/R1": 12.25})
    torch.save(state.state_dict(), tmp_path / "custom_checkpoint_0.pkl")
    loaded = TrainState()
    loaded.load_state_dict(torch.load(tmp_path / "custom_checkpoint_0.pkl", weights_only=True))
    assert loaded == state
    old = state.state_dict()
    del old["best_metrics"]
    before = TrainState()
    before.load_state_dict(old)
    assert before.best_metrics == {} and before.best_step == 30


def test_tensorboard_tags_put_losses_and_validation_first_and_drop_duplicates():
    from reid.engine.tracking import learning_rates, shown_in_tensorboard, tensorboard_tag

    names = ["loss/info_nce", "val/standard/standard/R1", "loss_weighted/cls", "diag/cls_acc", "lr", "grad_norm",
             "grl/alpha", "temperature", "epoch", "samples", "perf/samples_per_s"]
    tags = [tensorboard_tag(n) for n in names]
    assert tags == ["1_loss/info_nce", "2_val/standard/standard/R1", "3_loss_weighted/cls", "4_diag/cls_acc",
                    "5_optim/lr", "5_optim/grad_norm", "5_optim/grl/alpha", "5_optim/temperature",
                    "6_progress/epoch", "6_progress/samples", "6_progress/perf/samples_per_s"]
    assert sorted(tags, key=lambda t: t.split("/")[0]) == tags  # TensorBoard's group order is this order
    assert not shown_in_tensorboard("diag/xcorr_id_cloth", {"loss/decouple": 0.1, "diag/xcorr_id_cloth": 0.1})
    assert shown_in_tensorboard("diag/xcorr_id_cloth", {"diag/xcorr_id_cloth": 0.1})  # decouple off: not a duplicate
    assert not shown_in_tensorboard("val/standard/standard/num_skipped", {})
    four = {"encoders": 1e-4, "encoders_no_decay": 1e-4, "heads": 1e-3, "heads_no_decay": 1e-3}
    assert learning_rates(four) == {"lr/encoders": 1e-4, "lr/heads": 1e-3}
    assert learning_rates({k: 1e-3 for k in four}) == {"lr": 1e-3}
    assert learning_rates({"heads_no_decay": 5e-4}) == {"lr": 5e-4}
