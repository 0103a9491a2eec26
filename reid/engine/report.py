"""The short table a finished (or stopped) run prints on the main process."""

from __future__ import annotations

import os

from accelerate.state import PartialState


def print_summary(result) -> None:
    if not PartialState().is_main_process:
        return
    run = result.run_dir
    lines = [""]
    if result.stopped_early:
        lines.append(f"stopped at step {result.state.step}: resume with --resume latest train.run_name={run.name}")
    else:
        metrics = result.best_metrics or result.val_metrics
        names = [k for k in ("R1", "R5", "R10", "mAP", "mINP") if k in metrics]
        lines.append(f"val (best, step {result.state.best_step}): " + "  ".join(f"{k} {metrics[k]:6.2f}" for k in names))
        if result.val_metrics and result.best_metrics != result.val_metrics:
            last = result.val_metrics
            lines.append("val (final):        " + "  ".join(f"{k} {last[k]:6.2f}" for k in names if k in last))
    lines.append(f"run directory:  {run}")
    for name, path in sorted(result.exports.items()):
        lines.append(f"{name + ' model:':15} {path}")
    lines.append(f"tensorboard:    tensorboard --logdir {os.path.relpath(run / 'tensorboard')}")
    print("\n".join(lines), flush=True)
