"""Per-term meters kept on the device, and the writers: TensorBoard + ``log.jsonl`` on the main process.

Between two log points the meters only add detached tensors (no host sync); at a log point they are
averaged across ranks in one all-reduce and written once. TensorBoard tags come from the names the
criterion returns, so a new term shows up without touching this file:

- ``loss/<term>`` unweighted, ``loss_weighted/<term>``, ``loss/total``
- ``diag/<name>`` (mean |cos(id, cloth)|, gate image weight, accuracies, ...), ``temperature``,
  ``grl/alpha``, ``lr/<group>``, ``grad_norm``, ``perf/samples_per_s``, ``val/<metric>``
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

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            self.jsonl = open(Path(run_dir) / "log.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
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


def tagged(terms: dict[str, float], weights: dict[str, float], report: dict[str, float]) -> dict[str, float]:
    """Map meter names (``term/x``, ``report/x``, ``total``) to TensorBoard tags."""
    out: dict[str, float] = {}
    for name, value in terms.items():
        out[f"loss/{name}"] = value
        out[f"loss_weighted/{name}"] = value * weights.get(name, 0.0)
    for name, value in report.items():
        if name == "temperature":
            out["temperature"] = value
        elif name == "grl_alpha":
            out["grl/alpha"] = value
        else:
            out[f"diag/{name}"] = value
    return out
