"""Per-term meters kept on the device, and the writers: TensorBoard + ``log.jsonl`` on the main process.

Between two log points the meters only add detached tensors (no host sync); at a log point they are
averaged across ranks in one all-reduce and written once. The names come from the criterion, so a
new term shows up without touching this file. One flat dict per log point, keyed by name, goes to
``log.jsonl`` as is and to TensorBoard through :func:`tensorboard_tag`, whose numbered groups make
TensorBoard (which sorts groups by name) show them in this order:

====================  ==========================================================================
``1_loss``            ``loss/<term>`` unweighted, ``loss/total``
``2_val``             ``val/<protocol>/<mode>/<metric>``, percent
``3_loss_weighted``   ``loss_weighted/<term>`` (weight x term: what the total sums)
``4_diag``            ``diag/<name>``: mean |cos(id, cloth)|, accuracies (percent), gate weight
``5_optim``           ``lr`` (or ``lr/encoders`` and ``lr/heads`` when they differ), ``grad_norm``,
                      ``grl/alpha``, ``temperature``
``6_progress``        ``epoch``, ``samples``, ``perf/samples_per_s``
====================  ==========================================================================

Left out of TensorBoard (kept in ``log.jsonl``): ``diag/xcorr_id_cloth`` where ``loss/decouple``
is the same number, and ``val/.../num_skipped`` (queries without a hit: 0 on every split we ship).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch


class Meters:
    """Running sums (and counts) of named scalar tensors on the device."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = value.detach().float().reshape(())
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
            self.counts[name] = self.counts.get(name, 0) + 1

    def pop_means(self, accelerator: Any) -> dict[str, float]:
        """Average of each name since the last call, then across ranks (one all-reduce); resets."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        device = self.sums[names[0]].device  # one device for the stack, whatever each value came from
        stacked = torch.stack([self.sums[n].to(device) / self.counts[n] for n in names])
        if accelerator.num_processes > 1:
            stacked = accelerator.reduce(stacked, reduction="mean")
        values = stacked.tolist()
        self.sums.clear()
        self.counts.clear()
        return dict(zip(names, values))


class RunWriter:
    """TensorBoard event files under ``<run>/tensorboard`` and one JSON line per log point."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            # a folder named after the run: TensorBoard names the run by it (not ".")
            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard" / Path(run_dir).name))
            self.jsonl = open(Path(run_dir) / "log.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            if shown_in_tensorboard(name, values):
                self.writer.add_scalar(tensorboard_tag(name), value, step)
        self.jsonl.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **values}) + "\n")

    def event(self, kind: str, step: int, **fields: Any) -> None:
        """A JSON line that is not a curve (``checkpoint``: where, how big, how long it took)."""
        if self.enabled:
            self.jsonl.write(json.dumps({"kind": kind, "step": step, "time": time.time(), **fields}) + "\n")

    def text(self, tag: str, text: str) -> None:
        if self.enabled:
            self.writer.add_text(tag, text, 0)

    def close(self) -> None:
        if self.enabled:
            self.writer.flush()
            self.writer.close()
            self.jsonl.close()


_GROUPS = {"loss": "1_loss", "val": "2_val", "loss_weighted": "3_loss_weighted", "diag": "4_diag",
           "lr": "5_optim", "grad_norm": "5_optim", "grl": "5_optim", "temperature": "5_optim",
           "epoch": "6_progress", "samples": "6_progress", "perf": "6_progress"}


def tensorboard_tag(name: str) -> str:
    """The TensorBoard tag of a logged name (module docstring): its group, numbered, then the name
    without the group's own prefix (``loss/info_nce`` -> ``1_loss/info_nce``, ``grad_norm`` ->
    ``5_optim/grad_norm``); a name of no known group keeps its own."""
    head, _, rest = name.partition("/")
    group = _GROUPS.get(head)
    if group is None:
        return name
    keeps_head = head in ("grad_norm", "temperature", "epoch", "samples", "grl", "perf", "lr")
    return f"{group}/{name if keeps_head else rest}"


def shown_in_tensorboard(name: str, values: dict[str, float]) -> bool:
    """False for the duplicates the module docstring lists."""
    if name == "diag/xcorr_id_cloth" and "loss/decouple" in values:
        return False
    return not name.endswith("/num_skipped")


def learning_rates(lrs: dict[str, float]) -> dict[str, float]:
    """``{group: lr}`` of the optimizer's groups -> the distinct curves: a group's no-decay twin has
    its lr; encoders and heads that share one are one ``lr``."""
    parts = {name: lr for name, lr in lrs.items() if not name.endswith("_no_decay")}
    parts.update({name[: -len("_no_decay")]: lr for name, lr in lrs.items()
                  if name.endswith("_no_decay") and name[: -len("_no_decay")] not in parts})
    if len(set(parts.values())) <= 1:
        return {"lr": next(iter(parts.values()))} if parts else {}
    return {f"lr/{name}": lr for name, lr in sorted(parts.items())}


def step_values(total, terms: dict, report: dict) -> dict:
    """One training step's meter entries, named as they are logged (module docstring): ``loss/total``,
    ``loss/<term>``, ``temperature``, ``diag/<name>``."""
    out = {"loss/total": total, **{f"loss/{name}": value for name, value in terms.items()}}
    for name, value in report.items():
        out["temperature" if name == "temperature" else f"diag/{name}"] = value
    return out


def with_weighted(values: dict[str, float], weights: dict[str, float]) -> dict[str, float]:
    """``values`` plus ``loss_weighted/<term>`` = weight x ``loss/<term>`` for every weighted term."""
    weighted = {f"loss_weighted/{name}": values[f"loss/{name}"] * w for name, w in weights.items()
                if f"loss/{name}" in values}
    return {**values, **weighted}
