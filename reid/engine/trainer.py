"""The training loop: one Accelerator, one prepared model + optimizer, our own sampler and schedule.

``fit(cfg)`` builds everything from its config section, resumes if asked, trains with gradient
accumulation, logs every term, checkpoints atomically, evaluates on val (never test) and exports
the best and the final model as sharded safetensors. Accelerate owns device, precision and
distribution; the data loader is *not* prepared: ``GlobalBatchSampler`` already gives each rank its
slice of the global batch, in an order that a resumed run can re-create and skip into.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reid.config import Config
from reid.data import keys
from reid.engine.accel import backend_name, build_accelerator, is_deepspeed, optimizer_offloaded
from reid.engine.checkpoint import check_backend, check_compatible, parameter_shapes, save_checkpoint
from reid.engine.disk import free_bytes, full_reason, size_text
from reid.engine.optim import GROUP_SETTINGS, apply_lr, build_optimizer
from reid.engine.position import DataPlan, describe_resume
from reid.engine.report import brief
from reid.engine.restore import elastic, load_checkpoint, prepare_deepspeed_load
from reid.engine.resume import locate
from reid.engine.run import RunContext, build_components, choose_run_dir, create_run_dir
from reid.engine.signals import StopRequest, stop_with_launcher
from reid.engine.state import TrainState
from reid.engine.tracking import Meters, RunWriter, learning_rates, step_values, with_weighted
from reid.errors import DiskFullError, ReidError, silence_stdout


class TrainingError(ReidError):
    """Training cannot go on (too many non-finite losses, too many unreadable images)."""


@dataclass
class FitResult:
    run_dir: Path
    state: TrainState
    val_metrics: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False  # a stop request (signal / stop file) ended the run after a checkpoint
    exports: dict[str, Path] = field(default_factory=dict)


def fit(cfg: Config, *, config_name: str = "run", resume: str | None = None) -> FitResult:
    """Train ``cfg`` to the end (or to a stop request); returns where everything went."""
    stop_with_launcher()
    accelerator = build_accelerator(cfg)
    run_dir = choose_run_dir(cfg, accelerator, config_name, resume)
    start = locate(accelerator, resume, run_dir / "checkpoints")  # before anything is written
    if resume and start is None and accelerator.is_main_process:
        print(f"resume: no checkpoint yet under {run_dir}/checkpoints, starting fresh", flush=True)
    if start is not None:
        check_backend(*start, backend_name(accelerator))
        prepare_deepspeed_load(accelerator, start[1], is_deepspeed(accelerator))
    create_run_dir(cfg, accelerator, run_dir)
    ctx = build_components(cfg, accelerator, run_dir)
    trainer = _Trainer(cfg, accelerator, ctx)
    try:
        result = trainer.run(start)
    except BaseException:
        trainer.close(quiet=True)  # the error that ended the run is the one to report
        raise
    trainer.close()
    return result


class _Trainer:
    def __init__(self, cfg: Config, accelerator: Any, ctx: RunContext) -> None:
        self.cfg, self.accelerator, self.ctx = cfg, accelerator, ctx
        self.state = TrainState()
        self.raw_model = ctx.model
        optimizer = build_optimizer(
            ctx.model, cfg.optim, fused=accelerator.device.type == "cuda", cpu_offload=optimizer_offloaded(accelerator)
        )
        self.group_names = [group["name"] for group in optimizer.param_groups]  # before DeepSpeed wraps it
        self.group_sizes = [len(group["params"]) for group in optimizer.param_groups]
        self.group_settings = [{key: group[key] for key in GROUP_SETTINGS if key in group} for group in optimizer.param_groups]
        self.model, self.optimizer = accelerator.prepare(ctx.model, optimizer)
        self.custom_state = [self.state]  # checkpointed beside the model and optimizer, in this order
        if getattr(ctx.criterion, "memory", None) is not None:  # the identity-text memory resumes too
            self.custom_state.append(ctx.criterion.memory)
        accelerator.register_for_checkpointing(*self.custom_state)
        self.deepspeed = is_deepspeed(accelerator)
        self.writer = RunWriter(ctx.run_dir, enabled=accelerator.is_main_process)
        self.meters = Meters()
        self.stop = StopRequest(ctx.run_dir / "STOP", announce=accelerator.is_main_process).install()
        if accelerator.is_main_process:  # a stop file left by the run we resume must not stop us
            for path in self.stop.stop_files:
                path.unlink(missing_ok=True)
        accelerator.wait_for_everyone()
        self.plan = DataPlan(ctx.train_data.sampler, cfg.data.batch_size, accelerator.num_processes,
                             cfg.train.grad_accum, cfg.train.epochs, cfg.train.max_steps)
        if self.plan.steps_per_epoch == 0:
            raise TrainingError(
                f"one epoch has {len(ctx.train_data.sampler)} batches of {cfg.data.batch_size} x "
                f"{accelerator.num_processes} processes, fewer than train.grad_accum={cfg.train.grad_accum}: "
                "lower data.batch_size or train.grad_accum"
            )
        self.total_steps = self.plan.total_steps(self.state)  # planned again after a resume
        self.saved_step = -1  # one save per step, whatever the reasons to save coincide
        self.progress = None
        self.stop_pending = False
        self.last_lrs: dict[str, float] = {}

    @property
    def backend(self) -> str:
        return backend_name(self.accelerator)

    def _print(self, message: str) -> None:
        """On the global main process only (``accelerator.print`` prints once per node). A reader
        that closed our output (``... | head``) makes the run stop at the next step boundary with a
        checkpoint, quietly, rather than die with the work since the last one."""
        if not self.accelerator.is_main_process:
            return
        try:
            print(message, flush=True)
        except BrokenPipeError:
            silence_stdout()
            self.stop.request("standard output closed")

    # ---------------------------------------------------------------- resume / save
    def _resume(self, start: tuple[Path, dict[str, Any]] | None) -> None:
        if start is None:
            return
        path, marker = start
        check_compatible(path, marker, self.raw_model, self.backend, self.group_names, self.group_sizes)
        not_kept = load_checkpoint(self.accelerator, self.model, path, marker, self.custom_state, deepspeed=self.deepspeed,
                                   seed=self.cfg.train.seed, scratch=self.ctx.run_dir / "checkpoints")
        settings = self._configured_group_settings()
        if path.parent == self.ctx.run_dir / "checkpoints":
            self.saved_step = self.state.step  # this step is saved already
        self.total_steps = self.plan.total_steps(self.state)
        self._print(f"resumed from {path} at step {self.state.step} (epoch {self.state.epoch})")
        change = describe_resume(marker, self.plan, self.state, self.total_steps, not_kept=not_kept,
                                 universal=self.deepspeed and elastic(self.accelerator, marker))
        if change:
            self._print(change)
        if settings:
            self._print(f"optimizer settings from this run's config, not the checkpoint's: {settings}")

    def _configured_group_settings(self) -> str:
        """Put this run's optimizer settings (base lr, weight decay, betas, eps) back into the groups:
        a loaded optimizer state brings the checkpoint's, so an ``optim.lr=`` given on resume would
        otherwise be ignored. The Adam moments and step stay the checkpoint's. Returns what changed."""
        changes = []
        for name, group, wanted in zip(self.group_names, self.optimizer.param_groups, self.group_settings):
            for key, value in wanted.items():
                if _plain(group.get(key)) != _plain(value):
                    changes.append(f"{name} {key} {group.get(key)} -> {value}")
                    group[key] = value
        return "; ".join(changes)

    def _save(self) -> None:
        state = self.state
        if self.saved_step == state.step:
            return
        meta = {
            "epoch": state.epoch, "sample_in_epoch": state.sample_in_epoch, "epoch_global_batch": state.epoch_global_batch,
            "batch_size": self.plan.batch_size, "grad_accum": self.plan.grad_accum, "global_batch": self.plan.global_batch,
            "total_steps": self.total_steps, "backend": self.backend, "shapes": parameter_shapes(self.raw_model),
            "optimizer_groups": self.group_names,
            "optimizer_group_sizes": self.group_sizes,
        }
        tick = time.perf_counter()
        path = save_checkpoint(
            self.accelerator, self.ctx.run_dir / "checkpoints", state.step, meta, self.cfg.train.keep_last,
            failures_are_local=self.deepspeed, resume_hint=f"--resume latest train.run_name={self.ctx.run_dir.name}",
        )
        self.saved_step = state.step
        self.writer.event("checkpoint", state.step, path=str(path), seconds=round(time.perf_counter() - tick, 3))

    def _export(self, name: str) -> Path:
        """Export ``best`` / ``final``; a full disk is one line (the checkpoints stay)."""
        out = self.ctx.run_dir / name
        try:
            return self.ctx.export(self.model, out)
        except Exception as exc:
            reason = full_reason(exc, out.parent)
            if not reason:
                raise
            if self.accelerator.is_main_process:
                shutil.rmtree(out.with_name(f".{name}.tmp"), ignore_errors=True)
            error = DiskFullError(
                f"{out}: the {name} model was not exported: {reason} "
                f"({size_text(free_bytes(out.parent))} free); the checkpoints are kept: free space, then "
                f"resume with --resume latest train.run_name={self.ctx.run_dir.name}"
            )
            error.every_rank = True  # type: ignore[attr-defined]
            raise error from exc

    # ---------------------------------------------------------------- the loop
    def run(self, start: tuple[Path, dict[str, Any]] | None) -> FitResult:
        self._resume(start)
        result = FitResult(run_dir=self.ctx.run_dir, state=self.state)
        self._open_progress()
        while self.state.epoch < self.cfg.train.epochs and self.state.step < self.total_steps:
            stopped = self._train_epoch()
            if stopped:
                self._save()
                result.stopped_early = True
                self._print(f"stop requested ({self.stop.reason}): checkpoint saved at step {self.state.step}")
                return result
            if self.plan.micro_batches_left(self.state) == 0:
                self.state.epoch += 1
                self.state.sample_in_epoch = self.state.epoch_global_batch = 0
            self._end_of_epoch(result)
        if not result.val_metrics:
            result.val_metrics = self._evaluate()
            self._record_best(result)
        result.exports["final"] = self._export("final")
        if result.exports.get("best") is None and (self.ctx.run_dir / "best").exists():
            result.exports["best"] = self.ctx.run_dir / "best"
        result.best_metrics = dict(self.state.best_metrics)
        return result

    def _end_of_epoch(self, result: FitResult) -> None:
        done = self.state.epoch >= self.cfg.train.epochs or self.state.step >= self.total_steps
        every = self.cfg.train.eval_every
        if done or (every and self.state.epoch % every == 0):
            result.val_metrics = self._evaluate()
            self._record_best(result)
        self._save()

    def _train_epoch(self) -> bool:
        """Consume the rest of the current epoch; True if a stop request ended it early."""
        cfg, state, plan = self.cfg, self.state, self.plan
        if state.sample_in_epoch == 0:
            state.epoch_global_batch = plan.global_batch
        left = plan.micro_batches_left(state)
        if left == 0 or state.step >= self.total_steps:
            return False
        self.raw_model.grl_alpha = cfg.disentangle.alpha.at(state.epoch)  # the GRL strength, like the lr
        sampler = self.ctx.train_data.sampler
        sampler.set_epoch(state.epoch)
        sampler.set_start(state.sample_in_epoch, state.epoch_global_batch)
        self.model.train()
        tick, samples = time.perf_counter(), 0
        for batch in self.ctx.train_data.loader:
            if left == 0 or state.step >= self.total_steps:
                break
            self.stop_pending |= self._micro_step(batch)
            left -= 1
            samples += plan.global_batch
            state.sample_in_epoch += plan.global_batch
            state.samples_seen += plan.global_batch
            if not self.accelerator.sync_gradients:
                continue
            state.step += 1
            if state.step % cfg.train.log_every == 0 or state.step == self.total_steps:
                self._log(samples / max(1e-9, time.perf_counter() - tick))
                tick, samples = time.perf_counter(), 0
            if self.progress is not None:
                self.progress.update(1)
            if self.stop_pending:
                return True
            # An epoch's (or the run's) last step is saved once, after the epoch end's evaluation.
            if cfg.train.save_every and state.step % cfg.train.save_every == 0 and left and state.step < self.total_steps:
                self._save()
        return False

    def _micro_step(self, batch: dict[str, torch.Tensor]) -> bool:
        """Forward, loss, (skipped if non-finite) backward, and at the boundary the optimizer step."""
        self._count_bad_images(batch.pop(keys.BAD_IMAGES))
        batch = {k: v.to(self.accelerator.device, non_blocking=True) for k, v in batch.items()}
        self.last_lrs = apply_lr(self.optimizer, self.state.step, self.total_steps, self.cfg.optim)
        with self.accelerator.accumulate(self.model):
            outputs = self.model(batch)
            total, terms, report = self.ctx.criterion(outputs, batch)
            nonfinite, stop = self._agree(total)
            if nonfinite:
                self._skip_nonfinite(terms)
            else:
                self.state.bad_steps_in_row = 0
                self.accelerator.backward(total)
                self.meters.add(step_values(total, terms, report))
            if self.accelerator.sync_gradients:
                self._optimizer_step(nonfinite)
        return stop

    def _agree(self, total: torch.Tensor) -> tuple[bool, bool]:
        """All ranks agree whether the loss is finite and whether to stop (one tiny all-reduce:
        the one host sync of the step)."""
        flags = torch.stack([(~torch.isfinite(total.detach())).float(), torch.tensor(float(self.stop.poll()), device=total.device)])
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        nonfinite, stop = (flags > 0).tolist()
        return bool(nonfinite), bool(stop)

    def _skip_nonfinite(self, terms: dict[str, torch.Tensor]) -> None:
        state = self.state
        state.bad_steps_in_row += 1
        state.bad_steps_total += 1
        bad = [name for name, value in terms.items() if not torch.isfinite(value).all()]
        self._print(f"step {state.step}: non-finite loss ({', '.join(bad) or 'total'}), batch skipped")
        if state.bad_steps_in_row >= self.cfg.train.max_bad_steps:
            raise TrainingError(
                f"{state.bad_steps_in_row} non-finite losses in a row at step {state.step} "
                f"(terms: {', '.join(bad) or 'total'}); lower optim.lr / optim.head_lr or check the data. "
                f"The last checkpoint is in {self.ctx.run_dir / 'checkpoints'}"
            )

    def _optimizer_step(self, skipped: bool) -> None:
        """At an accumulation boundary. A skipped (non-finite) boundary micro-batch drops the whole
        window's update under DDP (gradients zeroed). Under DeepSpeed the step happens inside
        ``backward``, which a skipped micro-batch never calls: with ``train.grad_accum`` 1 that is a
        clean skip; with more, the window's earlier gradients stay in DeepSpeed's buffers and join
        the next window (a known limitation)."""
        if self.deepspeed:
            # DeepSpeed already clipped and stepped inside accelerator.backward().
            norm = self.model.get_global_grad_norm()
            if norm is not None and not skipped:
                # a float or a tensor, depending on the DeepSpeed version: keep it on the device
                self.meters.add({"grad_norm": torch.as_tensor(norm, dtype=torch.float32, device=self.accelerator.device)})
            return
        if not skipped:
            max_norm = self.cfg.train.max_grad_norm or float("inf")
            norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
            self.meters.add({"grad_norm": norm})
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _count_bad_images(self, count: torch.Tensor) -> None:
        n = int(count)  # a CPU tensor from the loader: no device sync
        if n:
            self.state.bad_images_total += n
            limit = self.cfg.data.max_bad_images
            if self.state.bad_images_total > limit:
                raise TrainingError(
                    f"{self.state.bad_images_total} unreadable training images (data.max_bad_images={limit}); "
                    "run `reid-data --check-images` on the dataset"
                )

    # ---------------------------------------------------------------- logging / eval
    def _open_progress(self) -> None:
        if self.accelerator.is_main_process and self.cfg.train.progress:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=self.total_steps, initial=self.state.step, desc="train", dynamic_ncols=True)

    def _log(self, samples_per_s: float) -> None:
        values = with_weighted(self.meters.pop_means(self.accelerator), self.ctx.weights)  # names as logged
        values.update(learning_rates(self.last_lrs))
        values["grl/alpha"] = float(self.raw_model.grl_alpha)
        values["perf/samples_per_s"] = samples_per_s
        values["epoch"] = self.state.epoch
        values["samples"] = self.state.samples_seen
        self.writer.scalars(self.state.step, values)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{values.get('loss/total', float('nan')):.3f}", sps=f"{samples_per_s:.0f}", epoch=self.state.epoch)

    def _evaluate(self) -> dict[str, float]:
        metrics = self.ctx.evaluate(self.model)
        self.writer.scalars(self.state.step, {f"val/{k}": v for k, v in metrics.items()}, kind="val")
        self._print(f"epoch {self.state.epoch} step {self.state.step}: {brief(metrics)}")
        return metrics

    def _record_best(self, result: FitResult) -> None:
        value = result.val_metrics.get(self.cfg.eval.select, -1.0)
        if value > self.state.best_metric:
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.best_metrics = dict(result.val_metrics)
            result.exports["best"] = self._export("best")

    def close(self, quiet: bool = False) -> None:
        """``quiet``: the run is ending on an error; a writer that cannot flush (a full disk) must
        not replace it."""
        if self.progress is not None:
            self.progress.close()
        self.stop.uninstall()
        try:
            self.writer.close()
        except Exception:
            if not quiet:
                raise
        self.accelerator.end_training()


def _plain(value: Any) -> Any:
    """(0.9, 0.999) and [0.9, 0.999] are the same betas (a saved optimizer state may hold either)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value
