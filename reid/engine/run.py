"""Everything a run is built from: its directory, data, tokenizer, model, criterion, eval and export."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate.utils import broadcast_object_list, set_seed

from reid.config import Config, save_config
from reid.data import build_eval_data, build_tokenizer, build_train_data, prepare_root
from reid.engine.checkpoint import candidates
from reid.errors import ConfigError
from reid.erasure import fit_clothing_eraser
from reid.evaluation import evaluate, split_truth
from reid.data.transforms import pixel_stats
from reid.export import export_model
from reid.distributed import DistContext
from reid.losses import Criterion
from reid.model import build_model


@dataclass
class RunContext:
    run_dir: Path
    model: torch.nn.Module
    criterion: Callable
    train_data: Any
    weights: dict[str, float]  # of the enabled terms (for loss_weighted/* tags)
    evaluate: Callable[[torch.nn.Module], dict[str, float]]
    export: Callable[[torch.nn.Module, Path], Path]


def choose_run_dir(cfg: Config, accelerator: Any, config_name: str, resume: str | None) -> Path:
    """``<train.output_dir>/<train.run_name>``; the main process picks the name and tells the others.
    Nothing is written yet: a resume that turns out impossible must leave no new run behind."""
    output = Path(cfg.train.output_dir)
    name = cfg.train.run_name
    if not name and accelerator.is_main_process:
        name = _latest_run(output, config_name) if resume == "latest" else None
        name = name or f"{config_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    names = [name]
    if accelerator.num_processes > 1:
        broadcast_object_list(names, from_process=0)
    return output / names[0]


def create_run_dir(cfg: Config, accelerator: Any, run_dir: Path) -> None:
    """Create the run directory and write the resolved config into it (main process)."""
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        header = ""
        if not cfg.data.root:
            from reid.data.cache import synthetic_dir

            header = (f"data.root is empty: the data is reid's generated synthetic dataset (data.synthetic), in\n"
                      f"CUHK-PEDES format ({cfg.data.dataset}) at {synthetic_dir(cfg.data).resolve()}")
        save_config(cfg, run_dir / "config.yaml", header)
    accelerator.wait_for_everyone()


def _latest_run(output: Path, config_name: str) -> str | None:
    """The most recent run of this config that has a checkpoint, intact or not (for ``--resume
    latest``: a damaged one is then reported, not passed over)."""
    runs = [p for p in output.glob(f"{config_name}-*") if candidates(p / "checkpoints")]
    return max(runs, key=lambda p: p.stat().st_mtime).name if runs else None


def build_components(cfg: Config, accelerator: Any, run_dir: Path) -> RunContext:
    set_seed(cfg.train.seed)
    rank, world = accelerator.process_index, accelerator.num_processes
    # The local main process generates the synthetic data / builds the arrow cache first; the
    # others then load it (the cache is written atomically, so nodes sharing a disk are safe too).
    with accelerator.local_main_process_first():
        prepare_root(cfg.data)
        tokenizer = build_tokenizer(cfg.data, cfg.model.text_encoder.path)
        mean, std = pixel_stats((cfg.data.pixel_mean, cfg.data.pixel_std), encoder_path=cfg.model.image_encoder.path)
        train_data = build_train_data(
            cfg.data, tokenizer, rank=rank, world_size=world, seed=cfg.train.seed, pixel_mean=mean, pixel_std=std
        )
        eval_data = build_eval_data(
            cfg.data, tokenizer, cfg.eval.split, batch_size=cfg.eval.batch_size, rank=rank, world_size=world,
            pixel_mean=mean, pixel_std=std,
        )
        notes: list[str] = []
        truth = split_truth(prepare_root(cfg.data), eval_data.gallery, eval_data.queries, notes)
    if truth is None and cfg.eval.select.startswith("clothing_change/"):
        raise ConfigError(f"eval.select: {cfg.eval.select!r} needs the clothing-change protocol, but {notes[0]}")
    set_seed(cfg.train.seed)  # same initial weights whatever the data side drew
    model = build_model(
        cfg.model, cfg.disentangle, num_classes=train_data.num_classes, image_size=cfg.data.image_size,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        text_max_length=cfg.data.text_max_length, sync_bn=accelerator.num_processes > 1,
    )
    if cfg.train.compile:
        model.compile_encoders()
    criterion = Criterion(cfg.disentangle, num_identities=train_data.num_classes, dist=DistContext.current())
    meta = {"num_classes": train_data.num_classes, "image_size": list(cfg.data.image_size),
            "pixel_mean": list(mean), "pixel_std": list(std)}

    def export(model_: torch.nn.Module, out: Path) -> Path:
        return export_model(accelerator, model_, out, cfg=cfg, tokenizer=tokenizer, meta=meta)

    eraser = model.clothing_eraser  # the unwrapped model's buffers: prepare() wraps, never copies, them

    def run_eval(model_: torch.nn.Module) -> dict[str, float]:
        if eraser is not None:  # refit on the current weights, so the evaluated (and exported) model carries its own
            fitted = fit_clothing_eraser(model_, eraser, cfg.data, cfg.model.clothing_eraser, tokenizer, accelerator,
                                         prepare_root(cfg.data), batch_size=cfg.eval.batch_size, pixel_mean=mean,
                                         pixel_std=std)
            if accelerator.is_main_process:
                print(fitted.describe(), flush=True)
        return evaluate(model_, eval_data, accelerator, truth=truth, standard=cfg.eval.standard,
                        chunk_size=cfg.eval.chunk_size)

    if accelerator.is_main_process:
        for warning in cfg.warnings():
            print(f"warning: {warning}")
    return RunContext(run_dir, model, criterion, train_data, criterion.weights, run_eval, export)

