"""Two processes (gloo, CPU) must train exactly like one process on the concatenated batch.

The spawned workers use small torch-only stand-ins for ViT/BERT (the encoders do not mix samples,
so they cannot affect the cross-process property) to keep start-up fast; everything the property
depends on is real: the heads, SyncBatchNorm1d, the GRL, the gathering and every loss term.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from reid.config import DisentangleConfig, ModelConfig
from reid.data import keys as K
from reid.distributed import DistContext, gather_with_grad
from reid.losses import Criterion
from reid.model import SyncBatchNorm1d, SyncBatchNorm2d, T2IReIDModel, convert_sync_batchnorm
from reid.model.model import HeadSettings

WORLD = 2
ROWS = 4  # per process
HIDDEN, VOCAB, CLASSES = 16, 30, 6
IMAGE = (3, 8, 4)
# (rtol, atol). float32, as training runs: gradients of magnitude ~10 agree to ~1e-5 absolute
# (~1e-6 relative to their scale: summation order differs). float64: to 1e-10, so a real
# mismatch cannot hide behind float32 rounding (measured: 2e-14).
DTYPES = {torch.float32: (1e-5, 1e-5), torch.float64: (1e-9, 1e-10)}


class ToyImageEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(IMAGE[0] * IMAGE[1] * IMAGE[2], HIDDEN)

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=torch.tanh(self.proj(pixel_values.flatten(1)))[:, None])


class ToyTextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, HIDDEN)
        self.config = SimpleNamespace(vocab_size=VOCAB)  # what id_words reads

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        mask = attention_mask.float()[..., None]  # (N, L, 1)
        pooled = (self.emb(input_ids) * mask).sum(1) / mask.sum(1)
        return SimpleNamespace(last_hidden_state=pooled[:, None])


def toy_model(dcfg: DisentangleConfig) -> T2IReIDModel:
    torch.manual_seed(0)
    cfg = ModelConfig(shared_dim=12, embed_dim=8, mlp_dropout=0.0)
    model = T2IReIDModel(
        ToyImageEncoder(), ToyTextEncoder(), hidden_size=HIDDEN, cfg=cfg, heads=HeadSettings.of(dcfg), num_classes=CLASSES
    )
    model.grl_alpha = dcfg.alpha.at(0)
    return model


def global_batch(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = WORLD * ROWS

    def text(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(1, VOCAB, (n, length), generator=g)
        mask = (torch.arange(length)[None] < torch.randint(2, length + 1, (n, 1), generator=g)).long()
        return ids * mask, mask

    batch = {K.IMAGES: torch.randn(n, *IMAGE, generator=g, dtype=dtype)}
    batch[K.PIDS] = torch.tensor([0, 1, 0, 2, 1, 3, 2, 3])  # same-person pairs straddle the two ranks
    for prefix, length in (("id", 7), ("cloth", 5), ("neg_cloth", 6)):
        batch[f"{prefix}_input_ids"], batch[f"{prefix}_attention_mask"] = text(length)
    batch[K.CLOTH_VALID] = torch.tensor([True, False, True, True, True, True, False, True])
    return batch


def configs() -> dict[str, DisentangleConfig]:
    default = DisentangleConfig()  # pair cloth_match, xcorr decouple, GRL on the cloth branch
    default.info_nce.same_person = "exclude"  # same-person keys on the other process left out too
    default.loss_weights.id_adv = 0.5  # the clothing adversary is contrastive too
    seed = DisentangleConfig(grl="adversary", learnable_temperature=True, label_smoothing=0.1)
    seed.cloth_match.form, seed.decouple.form = "seed", "seed"
    for dcfg in (default, seed):
        dcfg.alpha.start = 0.7
    return {"default": default, "seed": seed}


def train_step(dcfg: DisentangleConfig, batch: dict, distributed: bool) -> dict:
    model = toy_model(dcfg).to(batch[K.IMAGES].dtype).train()
    if distributed:
        model = convert_sync_batchnorm(model)
    out = model(batch)
    total, terms, _ = Criterion(dcfg, dist=DistContext.current())(out, batch)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"total": total.detach(), "terms": {k: v.detach() for k, v in terms.items()}, "grads": grads}


def _init(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)


def _criterion_worker(rank: int, init_file: str, out_dir: str) -> None:
    _init(rank, init_file)
    try:
        rows = slice(rank * ROWS, (rank + 1) * ROWS)
        for dtype in DTYPES:
            local = {k: v[rows] for k, v in global_batch(dtype).items()}
            for name, dcfg in configs().items():
                result = train_step(dcfg, local, distributed=True)
                torch.save(result, Path(out_dir) / f"{name}-{dtype}-{rank}.pt")
    finally:
        dist.destroy_process_group()


def _batchnorm_worker(rank: int, init_file: str, out_dir: str) -> None:
    _init(rank, init_file)
    try:
        results = {}
        for case in BN_CASES:
            bn, x, weights = _batchnorm_case(*case)
            bn = convert_sync_batchnorm(bn)
            assert isinstance(bn, SyncBatchNorm1d if case[1] == 1 else SyncBatchNorm2d)
            rows = slice(rank * ROWS, (rank + 1) * ROWS)
            results[case] = _batchnorm_run(bn, x[rows].clone(), weights[rows])
        torch.save(results, Path(out_dir) / f"bn-{rank}.pt")
    finally:
        dist.destroy_process_group()


# (momentum, dimensions): the heads' BatchNorm1d on (N, C), a ResNet encoder's BatchNorm2d on (N, C, H, W)
BN_CASES = [(0.1, 1), (None, 1), (0.1, 2)]


def _batchnorm_case(momentum: float | None, dims: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    bn = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(5, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    shape = (WORLD * ROWS, 5) if dims == 1 else (WORLD * ROWS, 5, 3, 2)
    x = torch.randn(shape) * 3 + 2
    return bn, x, torch.randn(shape)


def _batchnorm_run(bn: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> dict:
    x.requires_grad_(True)
    y = bn(x)
    y2 = bn(x * 0.5)  # a second step exercises the running-average update
    ((y + y2) * weights).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "mean": bn.running_mean.clone(), "var": bn.running_var.clone(),
            "w_grad": bn.weight.grad.clone(), "b_grad": bn.bias.grad.clone()}


def _spawn(fn, tmp_path: Path) -> None:
    mp.spawn(fn, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=WORLD, join=True)


def test_gather_is_identity_without_process_group() -> None:
    t = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(t) is t


def test_sync_batchnorm_matches_one_process_on_concatenated_batch(tmp_path: Path) -> None:
    _spawn(_batchnorm_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"bn-{r}.pt") for r in range(WORLD)]
    for case in BN_CASES:
        bn, x, weights = _batchnorm_case(*case)
        ref = _batchnorm_run(bn, x.clone(), weights)
        close = dict(rtol=0, atol=1e-6)
        torch.testing.assert_close(torch.cat([r[case]["y"] for r in ranks]), ref["y"], **close)
        torch.testing.assert_close(torch.cat([r[case]["x_grad"] for r in ranks]), ref["x_grad"], **close)
        for r in ranks:  # every rank holds the global running statistics
            torch.testing.assert_close(r[case]["mean"], ref["mean"], **close)
            torch.testing.assert_close(r[case]["var"], ref["var"], **close)
        # each rank's affine gradient is its own rows' share; DDP sums/averages them
        for key in ("w_grad", "b_grad"):
            torch.testing.assert_close(sum(r[case][key] for r in ranks), ref[key], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["default", "seed"])
def test_two_ranks_give_the_one_rank_loss_and_gradients(name: str, spawned_criterion: Path) -> None:
    dcfg = configs()[name]
    mean = lambda values: sum(values) / WORLD  # noqa: E731 - what DDP/DeepSpeed do to gradients
    for dtype, (rtol, atol) in DTYPES.items():
        ranks = [torch.load(spawned_criterion / f"{name}-{dtype}-{r}.pt") for r in range(WORLD)]
        ref = train_step(copy.deepcopy(dcfg), global_batch(dtype), distributed=False)
        assert len(ref["terms"]) == (8 if name == "default" else 7)
        torch.testing.assert_close(mean([r["total"] for r in ranks]), ref["total"], rtol=rtol, atol=atol)
        for term, value in ref["terms"].items():
            torch.testing.assert_close(mean([r["terms"][term] for r in ranks]), value, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{dtype} {term}: {m}")
        assert set(ranks[0]["grads"]) == set(ref["grads"])
        for param, grad in ref["grads"].items():
            torch.testing.assert_close(mean([r["grads"][param] for r in ranks]), grad, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{dtype} {param}: {m}")


@pytest.fixture(scope="module")
def spawned_criterion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-process run covering every configuration and dtype (spawning costs seconds)."""
    tmp_path = tmp_path_factory.mktemp("criterion")
    _spawn(_criterion_worker, tmp_path)
    return tmp_path


class OtherRanksInHand(DistContext):
    """rank ``rank`` of ``world`` without processes: the collectives return what a real gather would,
    read from a single process's outputs and batch on the whole global batch."""

    def __init__(self, rank: int, world: int, full_out: dict, full_batch: dict) -> None:
        super().__init__(rank, world)
        object.__setattr__(self, "full", {**full_batch, **full_out})

    def gather(self, name: str, t: torch.Tensor) -> torch.Tensor:
        from reid.losses.criterion import CLOTH_TEXT_HASH
        from reid.mining import text_hashes

        full = self.full
        value = text_hashes(full[K.CLOTH_INPUT_IDS], full[K.CLOTH_ATTENTION_MASK]) if name == CLOTH_TEXT_HASH else full[name]
        rows = slice(self.rank * len(t), (self.rank + 1) * len(t))
        torch.testing.assert_close(value[rows], t.detach())  # the local part is this rank's rows
        return value

    def max(self, name: str, t: torch.Tensor) -> torch.Tensor:
        from reid.losses import terms as T

        assert name == "id_words_used"
        ids, mask = self.full[K.ID_INPUT_IDS], self.full[K.ID_ATTENTION_MASK]
        return torch.maximum(t, T.word_targets(ids, mask, t.shape[0]).amax(dim=0))


@pytest.mark.parametrize("name", ["default", "seed"])
def test_each_rank_s_share_from_the_gathered_batch_averages_to_one_process(name):
    """The criterion as rank 0 and as rank 1 of 2, handed the global batch's tensors by a test double
    (no processes): the mean of the two ranks' totals and terms is the one-process value on the whole
    batch. The model runs in eval mode, so each row's outputs do not depend on the rest of its batch."""
    dcfg = configs()[name]
    dcfg.loss_weights.id_words = 0.5
    model = toy_model(dcfg).eval()
    batch = global_batch()
    with torch.no_grad():
        full_out = model(batch)
        one_total, one_terms, _ = Criterion(dcfg)(full_out, batch)
        shares = []
        for r in range(WORLD):
            local = {k: v[r * ROWS:(r + 1) * ROWS] for k, v in batch.items()}
            out = model(local)
            shares.append(Criterion(dcfg, dist=OtherRanksInHand(r, WORLD, full_out, batch))(out, local))
    torch.testing.assert_close(sum(s[0] for s in shares) / WORLD, one_total, rtol=1e-5, atol=1e-6)
    for term, value in one_terms.items():
        torch.testing.assert_close(sum(s[1][term] for s in shares) / WORLD, value, rtol=1e-5, atol=1e-6, msg=term)
