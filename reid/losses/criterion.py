"""The criterion: every enabled term (unweighted), their weighted total, and diagnostics.

    total, terms, report = Criterion(cfg.disentangle)(model(batch), batch)

A term whose weight is 0 is not computed at all (and the model does not produce its inputs).
Nothing here waits on the host: no ``.item()``, no branching on tensor values; masks are applied
with ``torch.where`` / weights.

Several processes: the contrastive terms (``info_nce``, ``bio``, ``cloth``, seed-form
``cloth_match``) and the batch statistics of ``decouple`` (xcorr form) see the global batch,
gathered with gradient; pair-form ``cloth_match`` mines its hard negatives among the global batch.
Each process returns its share of the global loss (see reid/losses/terms.py), so that after
DDP/DeepSpeed average the gradients over processes they equal one process training on the
concatenated batch (tests/test_gather.py); ``id_adv`` is contrastive too. Per-sample terms (``cls``, ``cloth_adv``,
``fusion_match``) are local means; that needs the same batch size on every process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reid.config import DisentangleConfig
from reid.data import keys
from reid.losses import terms as T
from reid.distributed import DistContext
from reid.losses.memory import IdentityMemory
from reid.mining import hardest_negatives, text_hashes

CLOTH_TEXT_HASH = "cloth_text_hash"  # derived batch key: reid.mining.text_hashes of the clothing texts

TERM_NAMES = ("info_nce", "cls", "bio", "cloth", "cloth_adv", "cloth_match", "decouple", "fusion_match", "id_adv",
              "id_words")


class _Batch:
    """This process's outputs and batch, with lazily gathered global versions (each gathered once)."""

    def __init__(self, outputs: dict[str, Tensor], batch: dict[str, Tensor], dist: DistContext) -> None:
        self.out, self.batch, self.dist = outputs, batch, dist
        self.world = dist.world
        b = batch[keys.PIDS].shape[0]
        self.rows = (dist.rank * b, (dist.rank + 1) * b) if self.world > 1 else None
        self._gathered: dict[str, Tensor] = {}

    def local(self, key: str) -> Tensor:
        if key == CLOTH_TEXT_HASH and key not in self.batch:  # derived from the batch, once
            self.batch = {**self.batch, key: text_hashes(self.batch[keys.CLOTH_INPUT_IDS],
                                                          self.batch[keys.CLOTH_ATTENTION_MASK])}
        return self.out[key] if key in self.out else self.batch[key]

    def all(self, key: str) -> Tensor:
        if key not in self._gathered:
            self._gathered[key] = self.dist.gather(key, self.local(key))
        return self._gathered[key]

    @property
    def tau(self) -> Tensor:
        return self.out["temperature"]  # (1,)


class Criterion:
    """Weighted sum of the loss terms named in ``disentangle.loss_weights`` (weight 0 = skipped)."""

    def __init__(self, dcfg: DisentangleConfig, num_identities: int = 0, *, dist: DistContext = DistContext()) -> None:
        """``dist``: this process's place in the run (``DistContext.current()`` in training; the
        default is one process)."""
        self.cfg = dcfg
        self.dist = dist
        weights = {name: float(getattr(dcfg.loss_weights, name)) for name in TERM_NAMES}
        self.weights = {name: w for name, w in weights.items() if w > 0}
        self.memory = None  # checkpointed by the trainer (accelerator.register_for_checkpointing)
        if dcfg.info_nce.memory and "info_nce" in self.weights:
            if num_identities < 1:
                raise ValueError("disentangle.info_nce.memory needs the number of training identities")
            self.memory = IdentityMemory(num_identities, dcfg.info_nce.memory_momentum)

    def __call__(
        self, outputs: dict[str, Tensor], batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """-> (total, {term: unweighted value}, {diagnostic: detached value}), all 0-d tensors."""
        view = _Batch(outputs, batch, self.dist)
        terms: dict[str, Tensor] = {}
        for name in self.weights:
            terms[name] = getattr(self, f"_{name}")(view, terms)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, terms, diagnostics(outputs, batch)

    # One method per term: pick the inputs, call the pure function in reid/losses/terms.py.
    def _info_nce(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        all_pids, text = v.all(keys.PIDS), v.all("id_text_embeds")
        pids = all_pids if self.cfg.info_nce.same_person == "exclude" else None
        memory = self.memory.keys(all_pids) if self.memory is not None else None
        loss = T.info_nce(v.all("image_embeds"), text, v.tau, rows=v.rows, pids=pids, memory=memory)
        if self.memory is not None:
            self.memory.update(all_pids, text)  # after the loss: a batch never contrasts with itself
        return loss

    def _cls(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        return T.id_classification(v.out["id_logits"], v.batch[keys.PIDS], self.cfg.label_smoothing)

    def _bio(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        return T.sdm(v.all("image_embeds"), v.all("id_text_embeds"), v.all(keys.PIDS), v.tau, rows=v.rows)

    def _cloth(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        image, text, valid = v.all("cloth_image_embeds"), v.all("cloth_text_embeds"), v.all(keys.CLOTH_VALID)
        return T.cloth_contrastive(image, text, valid, v.tau, rows=v.rows)

    def _cloth_adv(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        return T.adversarial_id(v.out["cloth_adv_logits"], v.batch[keys.PIDS])

    def _cloth_match(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        if self.cfg.cloth_match.form == "seed":
            if "cloth" in done:  # the same quantity (see terms.cloth_match_seed): compute it once
                return done["cloth"]
            image, text, valid = v.all("cloth_image_embeds"), v.all("cloth_text_embeds"), v.all(keys.CLOTH_VALID)
            return T.cloth_match_seed(image, text, valid, v.tau, rows=v.rows)
        return self._pair_cloth_match(v)

    def _pair_cloth_match(self, v: _Batch) -> Tensor:
        """Per valid row: its own cloth text (y=1), the data's negative (y=0) and a hard negative
        (y=0): the most similar valid cloth text of another person in the global batch that is not
        the row's own text word for word (:mod:`reid.mining`)."""
        image = v.out["cloth_image_embeds"]  # (b, E)
        valid, pids = v.batch[keys.CLOTH_VALID], v.batch[keys.PIDS]
        texts_all, pids_all, valid_all = v.all("cloth_text_embeds"), v.all(keys.PIDS), v.all(keys.CLOTH_VALID)
        own = v.local(CLOTH_TEXT_HASH)  # (b,) identical clothing texts are never negatives
        with torch.no_grad():
            sim = image.float() @ texts_all.float().T  # (b, N)
            hard, has_hard = hardest_negatives(sim, pids, pids_all, own, v.all(CLOTH_TEXT_HASH), valid_all)
        b = image.shape[0]
        texts = torch.cat([v.out["cloth_text_embeds"], v.out["neg_cloth_text_embeds"], texts_all[hard]])
        is_matched = torch.cat([torch.ones(b, device=image.device), torch.zeros(2 * b, device=image.device)])
        row_weight = valid.float() / (2.0 + has_hard.float())  # each valid row weighs 1 in all
        weight = torch.cat([row_weight, row_weight, row_weight * has_hard])
        denom = valid_all.sum().clamp(min=1) / v.world  # global mean over valid rows, exact across ranks
        bias = v.out["cloth_match_bias"]
        return T.pair_match(image.repeat(3, 1), texts, is_matched, v.tau, bias, weight=weight, denom=denom)

    def _decouple(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        if self.cfg.decouple.form == "seed":
            return T.decouple_seed(v.out["decouple_id"], v.out["decouple_cloth"])
        return T.decouple_xcorr(v.all("id_embeds"), v.all("cloth_embeds"))

    def _id_adv(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        image, valid = v.all("id_adv_embeds"), v.all(keys.CLOTH_VALID)
        return T.clothing_adversary(image, v.all("cloth_text_embeds"), valid, v.tau, rows=v.rows)

    def _id_words(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        logits = v.out["id_word_logits"]  # (b, V)
        targets = T.word_targets(v.batch[keys.ID_INPUT_IDS], v.batch[keys.ID_ATTENTION_MASK], logits.shape[1])
        used = targets.amax(dim=0)  # (V,) the words this process's identity texts use
        used = v.dist.max("id_words_used", used)  # ... and those of the global batch (no gradient)
        return T.identity_words(logits, targets, used > 0)

    def _fusion_match(self, v: _Batch, done: dict[str, Tensor]) -> Tensor:
        out = v.out
        return T.fusion_match(out["fusion_pos_logits"], out["fusion_neg_logits"], out["fusion_neg_valid"])


@torch.no_grad()
def diagnostics(outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached 0-d tensors describing this process's batch; keys present when their inputs are.
    Accuracies (``*_acc``) are in percent, like the val metrics."""
    out = outputs
    pids = batch[keys.PIDS]
    report = {"temperature": out["temperature"].detach().float().reshape(())}
    if "cloth_embeds" in out:
        id_e, cloth_e = out["id_embeds"].float(), out["cloth_embeds"].float()
        report["mean_abs_cos_id_cloth"] = F.cosine_similarity(id_e, cloth_e, dim=-1).abs().mean()
        report["xcorr_id_cloth"] = T.decouple_xcorr(id_e, cloth_e)
    if "id_logits" in out:
        report["cls_acc"] = 100 * (out["id_logits"].argmax(dim=1) == pids).float().mean()
    if "cloth_adv_logits" in out:
        report["adv_acc"] = 100 * (out["cloth_adv_logits"].argmax(dim=1) == pids).float().mean()
    if "id_adv_embeds" in out:  # how often the adversary picks the row's own clothing text
        valid = batch[keys.CLOTH_VALID]
        sim = (out["id_adv_embeds"].float() @ out["cloth_text_embeds"].float().T).masked_fill(~valid[None], -2.0)
        hit = (sim.argmax(dim=1) == torch.arange(len(valid), device=valid.device)) & valid
        report["id_adv_acc"] = 100 * hit.float().sum() / valid.sum().clamp(min=1)
    if "cloth_match_bias" in out:
        report["cloth_match_bias"] = out["cloth_match_bias"].detach().float().reshape(())
        report["cloth_match_acc"] = 100 * _pair_accuracy(out, batch[keys.CLOTH_VALID])
    if "gate_image_weight" in out:
        report["gate_image_weight"] = out["gate_image_weight"].float().mean()
    if "fusion_pos_logits" in out:
        valid = out["fusion_neg_valid"]
        right = (out["fusion_pos_logits"] > 0).float().sum()
        right = right + ((out["fusion_neg_logits"] < 0) & valid).float().sum()
        report["fusion_acc"] = 100 * right / (out["fusion_pos_logits"].shape[0] + valid.sum())
    return report


def _pair_accuracy(out: dict[str, Tensor], valid: Tensor) -> Tensor:
    """Share of the explicit (own text, data negative) pairs the pair-match logit gets right."""
    def logit(text: Tensor) -> Tensor:
        cos = F.cosine_similarity(out["cloth_image_embeds"].float(), text.float(), dim=-1)
        return cos / out["temperature"] + out["cloth_match_bias"]

    right = (logit(out["cloth_text_embeds"]) > 0).float() + (logit(out["neg_cloth_text_embeds"]) < 0).float()
    return (right * valid).sum() / (2 * valid.sum()).clamp(min=1)
