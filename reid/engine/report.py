"""What a run prints: one line per evaluation, and the short table a finished (or stopped) run ends with."""

from __future__ import annotations

import os

from accelerate.state import PartialState

_PROTOCOLS = {"standard": "standard", "clothing_change": "clothing-change"}
_MODES = {"standard": "standard", "clothing_invariant": "clothing-invariant", "oracle": "attribute oracle"}


def _rows(metrics: dict[str, float]) -> list[tuple[str, str]]:
    """(protocol, mode) pairs present in a flat ``<protocol>/<mode>/<metric>`` dict, in order."""
    seen: list[tuple[str, str]] = []
    for key in metrics:
        protocol, mode, _ = key.split("/")
        if (protocol, mode) not in seen:
            seen.append((protocol, mode))
    return seen


def brief(metrics: dict[str, float]) -> str:
    """One line: R1 of every mode per protocol (and the standard mAP), the oracle in brackets."""
    parts = []
    for protocol in _PROTOCOLS:
        modes = [m for p, m in _rows(metrics) if p == protocol and m != "oracle"]
        if not modes:
            continue
        text = " ".join(f"{m.replace('clothing_', '')} R1 {metrics[f'{protocol}/{m}/R1']:.2f}" for m in modes)
        if protocol == "standard":
            text += f" mAP {metrics['standard/standard/mAP']:.2f}"
        oracle = metrics.get(f"{protocol}/oracle/R1")
        text += f" (oracle R1 {oracle:.2f})" if oracle is not None else ""
        parts.append(f"{_PROTOCOLS[protocol]}: {text}")
    return " | ".join(parts)


def table(metrics: dict[str, float]) -> list[str]:
    """R1 and mAP of every (protocol, mode) row, with R1 as a share of the oracle's R1."""
    lines = [f"  {'protocol':<17}{'mode':<27}{'R1':>7}{'mAP':>8}{'R1/oracle':>11}"]
    for protocol, mode in _rows(metrics):
        r1, mean_ap = metrics[f"{protocol}/{mode}/R1"], metrics[f"{protocol}/{mode}/mAP"]
        oracle = metrics.get(f"{protocol}/oracle/R1")
        share = f"{100 * r1 / oracle:10.1f}%" if oracle and mode != "oracle" else ""
        label = _MODES.get(mode, mode)
        lines.append(f"  {_PROTOCOLS[protocol]:<17}{label:<27}{r1:7.2f}{mean_ap:8.2f}{share}")
    return lines


def print_summary(result, select: str = "standard/standard/R1") -> None:
    if not PartialState().is_main_process:
        return
    run = result.run_dir
    lines = [""]
    if result.stopped_early:
        lines.append(f"stopped at step {result.state.step}: resume with --resume latest train.run_name={run.name}")
    else:
        metrics = result.best_metrics or result.val_metrics
        lines.append(f"val (best at step {result.state.best_step}, by {select}):")
        lines += table(metrics)
        last = result.val_metrics
        if last and result.best_metrics and result.best_metrics != last and select in last:
            lines.append(f"val (final, step {result.state.step}): {select} {last[select]:.2f}")
    lines.append(f"run directory:  {run}")
    for name, path in sorted(result.exports.items()):
        lines.append(f"{name + ' model:':15} {path}")
    lines.append(f"tensorboard:    tensorboard --logdir {os.path.relpath(run / 'tensorboard')}")
    print("\n".join(lines), flush=True)
