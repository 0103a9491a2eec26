"""Build the Accelerator, and settle DeepSpeed's "auto" values from our config (set in one place).

Where each training knob is set — exactly one place each:

=====================  =========================================================================
precision              the Accelerate config / ``accelerate launch --mixed_precision`` (DeepSpeed
                       JSONs say ``"bf16": {"enabled": "auto"}``)
accumulation           ``train.grad_accum`` (DeepSpeed JSONs say ``"auto"``)
clipping               ``train.max_grad_norm`` (DeepSpeed JSONs say ``"auto"``; Accelerate alone
                       would fill 1.0)
micro-batch size       ``data.batch_size`` (per process)
ZeRO stage / offload   the DeepSpeed JSON named by the Accelerate config
=====================  =========================================================================
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

from reid.config import Config
from reid.errors import ConfigError


def settle_launch_environment(checkout: Path) -> None:
    """What an entry point (launch/train.py, launch/evaluate.py) sets up before Accelerate reads the
    environment; library code never writes ``os.environ``.

    * The accelerate_configs/*.yaml name ``ds_configs/*.json`` relative to the checkout; Accelerate
      resolves that against the working directory. A relative name that is not a file there is
      looked up under ``checkout`` (the directory of the launched script's repository, which is
      right for an editable and a regular ``pip install .`` alike) and made absolute.
    * Accelerate drops ``use_cpu: true`` from config files on the way to the workers; without
      ACCELERATE_USE_CPU several CPU processes would train side by side without DDP (unsynced).
    """
    name = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if name and not Path(name).is_absolute() and not Path(name).is_file() and (checkout / name).is_file():
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str((checkout / name).resolve())
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if not torch.cuda.is_available() and launched_world > 1 and not deepspeed_env:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def build_accelerator(cfg: Config) -> Accelerator:
    """One Accelerator for the run; gloo on CPU (DeepSpeed on CPU miscounts processes without it).
    The entry point calls :func:`settle_launch_environment` first."""
    name = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
    if name and not Path(name).is_file():
        raise ConfigError(f"DeepSpeed config file '{name}' (named by the Accelerate config) does not exist")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    launched_world = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    # Every trainable parameter receives a gradient each step (terms with weight 0 build no
    # modules), so DDP needs no unused-parameter search.
    handlers: list = [DistributedDataParallelKwargs(find_unused_parameters=False)]
    if launched_world > 1 or deepspeed_env:  # a backend for a single plain process breaks Accelerate
        handlers.append(InitProcessGroupKwargs(backend=backend, timeout=timedelta(minutes=30)))
    accelerator = Accelerator(gradient_accumulation_steps=cfg.train.grad_accum, kwargs_handlers=handlers)
    if launched_world > 1 and (accelerator.num_processes != launched_world or accelerator.distributed_type == DistributedType.NO):
        raise ConfigError(
            f"launched {launched_world} processes but Accelerate sees {accelerator.num_processes} "
            f"({accelerator.distributed_type}): on CPU use accelerate_configs/cpu_ddp.yaml or "
            "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N"
        )
    if accelerator.device.type == "cpu":
        threads, why = cpu_threads(cfg.train.cpu_threads)
        torch.set_num_threads(threads)
        if accelerator.is_main_process:  # on stderr: the first line on stdout belongs to the run (`| head` stops it)
            threads = torch.get_num_threads()
            try:
                print(f"cpu: {threads} thread{'s' if threads > 1 else ''} per process ({why})", file=sys.stderr, flush=True)
            except OSError:  # a closed stderr costs the note only
                pass
    if is_deepspeed(accelerator):
        _fill_deepspeed_config(accelerator, cfg)
        if torch.cuda.is_available() and accelerator.mixed_precision == "no" and accelerator.is_main_process:
            print("warning: DeepSpeed on GPU in fp32: pass --mixed_precision bf16 to accelerate launch "
                  '(the ds_configs JSONs say "bf16": "auto")', flush=True)
    return accelerator


def cpu_threads(requested: int) -> tuple[int, str]:
    """Intra-op threads for each process of a CPU run, and why: ``requested``, or (0) the cores this
    process may use (its affinity: a SLURM allocation, a cgroup, ``taskset``) divided among the
    processes on its node (torchrun's LOCAL_WORLD_SIZE), at least 1."""
    if requested:
        return requested, f"train.cpu_threads={requested}; 0 = the usable cores"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    plural = "es" if local > 1 else ""
    return max(1, cores // local), f"{cores} usable cores / {local} process{plural} on this node; train.cpu_threads sets it"


def is_deepspeed(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.DEEPSPEED


def zero_stage(accelerator: Accelerator) -> int:
    if not is_deepspeed(accelerator):
        return 0
    return int(accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


def backend_name(accelerator: Accelerator) -> str:
    """How the training state is stored: ``DDP`` (any plain Accelerate run) or ``DeepSpeed ZeRO-<stage>``."""
    return f"DeepSpeed ZeRO-{zero_stage(accelerator)}" if is_deepspeed(accelerator) else "DDP"


def optimizer_offloaded(accelerator: Accelerator) -> bool:
    """True when the DeepSpeed JSON offloads the optimizer state (ZeRO-Offload)."""
    if not is_deepspeed(accelerator):
        return False
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
    return zero.get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")


def _fill_deepspeed_config(accelerator: Accelerator, cfg: Config) -> None:
    """Replace the JSON's "auto" batch size and clipping by our values; refuse conflicting ones."""
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    settings = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_clipping": cfg.train.max_grad_norm,
        "gradient_accumulation_steps": cfg.train.grad_accum,
    }
    for key, ours in settings.items():
        theirs = ds.get(key, "auto")
        if theirs == "auto":
            ds[key] = ours
        elif float(theirs) != float(ours):
            raise ConfigError(
                f"DeepSpeed config sets {key}={theirs} but the reid config says {ours}: set it in one "
                f'place (write "auto" in the DeepSpeed JSON)'
            )
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(
            "the DeepSpeed JSON must not define 'optimizer' or 'scheduler': reid builds AdamW with "
            "parameter groups and sets the lr per step (see reid/engine/optim.py)"
        )
