"""A memory of identity texts: one embedding per training identity, kept across batches.

A batch of P identities lets ``info_nce`` tell people apart by whatever few identity facts already
separate those P (on the synthetic data: hair and skin colour), so the facts that rarely decide
inside one batch (build, hair style, gender) get almost no gradient. With the memory, each image is
also contrasted with the identity texts of every other training identity seen so far (the
``info_nce`` image -> text direction only): among hundreds of people, every fact counts.

Each row is the L2-normalised running mean of that identity's identity-text embeddings:
``row <- normalise(m * row + (1 - m) * mean of the identity's rows in this batch)``, the first
visit copies the mean. Updates take the *gathered* global batch, detached, so every process holds
the same memory; rows with a non-finite embedding are ignored. The memory is a checkpointed object
(``state_dict`` / ``load_state_dict``), so a resumed run continues exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class IdentityMemory:
    def __init__(self, num_identities: int, momentum: float) -> None:
        self.num_identities, self.momentum = num_identities, momentum
        self.bank: Tensor | None = None  # (C, E), made at the first update (E and device known then)
        self.seen = torch.zeros(num_identities, dtype=torch.bool)

    def _to(self, device: torch.device) -> None:
        if self.bank is not None and self.bank.device != device:
            self.bank = self.bank.to(device)
        self.seen = self.seen.to(device)

    def keys(self, batch_pids: Tensor) -> tuple[Tensor, Tensor] | None:
        """(rows (C, E), usable (C,)) on ``batch_pids``' device: usable rows are identities seen
        before and not in this batch (those are the batch's own texts). None before the first update."""
        if self.bank is None:
            return None
        self._to(batch_pids.device)
        in_batch = torch.zeros(self.num_identities, dtype=torch.bool, device=batch_pids.device)
        in_batch[batch_pids] = True
        return self.bank, self.seen & ~in_batch

    @torch.no_grad()
    def update(self, pids: Tensor, text: Tensor) -> None:
        """Fold the (global) batch's identity-text embeddings into their identities' rows."""
        text = text.detach().float()
        if self.bank is None:
            self.bank = torch.zeros(self.num_identities, text.shape[1], device=text.device)
        self._to(text.device)
        ok = torch.isfinite(text).all(dim=1)  # (N,)
        text = torch.where(ok[:, None], text, 0.0)
        sums = torch.zeros_like(self.bank).index_add_(0, pids, text)  # (C, E)
        counts = torch.zeros(self.num_identities, device=self.bank.device).index_add_(0, pids, ok.float())
        present = counts > 0
        mean = sums / counts.clamp(min=1)[:, None]
        mixed = torch.where(self.seen[:, None], self.momentum * self.bank + (1 - self.momentum) * mean, mean)
        self.bank = torch.where(present[:, None], F.normalize(mixed, dim=1), self.bank)
        self.seen = self.seen | present

    def state_dict(self) -> dict:
        return {"bank": None if self.bank is None else self.bank.cpu(), "seen": self.seen.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.bank, self.seen = state["bank"], state["seen"].bool()
