"""Each loss term against a hand-computed case, and against what it claims to react to."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reid.config import DisentangleConfig
from reid.data import keys as K
from reid.losses import Criterion, TERM_NAMES
from reid.losses import terms as T


def _ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(z) for z in logits))


def _bce(z: float, y: float) -> float:
    return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))


def _unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float64), dim=-1)


# -------------------------------------------------------------------------------------------- info_nce
def test_info_nce_hand_computed() -> None:
    image = _unit([1, 0], [0, 1])
    text = _unit([1, 0], [0.6, 0.8])
    # s = image @ text.T / 0.5 = [[2, 1.2], [0, 1.6]]
    i2t = (_ce([2, 1.2], 0) + _ce([0, 1.6], 1)) / 2
    t2i = (_ce([2, 0], 0) + _ce([1.2, 1.6], 1)) / 2
    assert T.info_nce(image, text, 0.5).item() == pytest.approx((i2t + t2i) / 2, abs=1e-12)


def test_info_nce_prefers_the_true_pairing() -> None:
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    text = F.normalize(image + 0.1 * torch.randn(6, 8, generator=g), dim=-1)
    assert T.info_nce(image, text, 0.1) < T.info_nce(image, text.roll(1, dims=0), 0.1) - 1.0


def test_invalid_rows_are_neither_queries_nor_keys() -> None:
    g = torch.Generator().manual_seed(1)
    image, text = F.normalize(torch.randn(2, 5, 4, generator=g), dim=-1)
    valid = torch.tensor([True, False, True, True, False])
    loss = T.cloth_contrastive(image, text, valid, 0.2)
    assert loss.item() == pytest.approx(T.info_nce(image[valid], text[valid], 0.2).item(), abs=1e-6)
    image2, text2 = image.clone(), text.clone()
    image2[1], text2[4] = image[0], text[3]  # move the invalid rows onto valid ones
    assert T.cloth_contrastive(image2, text2, valid, 0.2).item() == pytest.approx(loss.item(), abs=1e-6)
    assert T.cloth_contrastive(image, text, torch.zeros(5, dtype=torch.bool), 0.2).item() == 0.0


@pytest.mark.parametrize("masked", [False, True])
def test_row_slices_average_to_the_full_loss(masked: bool) -> None:
    """What each of two processes computes on its own rows averages to the full loss."""
    g = torch.Generator().manual_seed(2)
    image, text = F.normalize(torch.randn(2, 6, 4, generator=g, dtype=torch.float64), dim=-1)
    pids = torch.tensor([0, 1, 0, 2, 1, 2])
    valid = torch.tensor([True, True, False, True, False, True]) if masked else None
    full = T.info_nce(image, text, 0.3, valid=valid)
    halves = [T.info_nce(image, text, 0.3, valid=valid, rows=r) for r in ((0, 3), (3, 6))]
    assert (sum(halves) / 2).item() == pytest.approx(full.item(), abs=1e-12)
    sdm_halves = [T.sdm(image, text, pids, 0.3, rows=r) for r in ((0, 3), (3, 6))]
    assert (sum(sdm_halves) / 2).item() == pytest.approx(T.sdm(image, text, pids, 0.3).item(), abs=1e-12)


# ------------------------------------------------------------------------------------------------ bio
def test_sdm_hand_computed() -> None:
    image = _unit([1, 0], [0, 1])
    text = _unit([1, 0], [0, 1])
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]  # softmax of [1, 0] at tau = 1
    eps = 1e-8
    # same person: q = [1/2, 1/2]; different people: q = [1, 0]
    same = sum(pj * (math.log(pj) - math.log(0.5 + eps)) for pj in p)
    diff = p[0] * (math.log(p[0]) - math.log(1 + eps)) + p[1] * (math.log(p[1]) - math.log(eps))
    assert T.sdm(image, text, torch.tensor([7, 7]), 1.0).item() == pytest.approx(same, abs=1e-9)
    assert T.sdm(image, text, torch.tensor([7, 8]), 1.0).item() == pytest.approx(diff, abs=1e-9)


def test_sdm_does_not_push_a_person_from_their_own_captions() -> None:
    """P x K batch, two captions per person, embedded identically per person: InfoNCE still
    counts the other caption as a negative (a log 2 floor); SDM is satisfied."""
    person = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    image = text = person.repeat_interleave(2, dim=0)  # (6, 3)
    pids = torch.arange(3).repeat_interleave(2)
    assert T.info_nce(image, text, 0.01).item() == pytest.approx(math.log(2), abs=1e-6)
    assert T.sdm(image, text, pids, 0.01).item() < 1e-6
    assert T.info_nce(image, text, 0.01, pids=pids).item() < 1e-6  # same person left out: no floor


def test_info_nce_leaving_out_the_same_person_hand_computed() -> None:
    image = _unit([1, 0], [0, 1], [1, 1])
    text = _unit([1, 0], [0.6, 0.8], [0, 1])
    pids = torch.tensor([5, 6, 5])  # rows 0 and 2: one person
    s = (image @ text.T / 0.5).tolist()
    i2t = (_ce([s[0][0], s[0][1]], 0) + _ce(s[1], 1) + _ce([s[2][1], s[2][2]], 1)) / 3
    t2i = (_ce([s[0][0], s[1][0]], 0) + _ce([s[0][1], s[1][1], s[2][1]], 1) + _ce([s[1][2], s[2][2]], 1)) / 3
    assert T.info_nce(image, text, 0.5, pids=pids).item() == pytest.approx((i2t + t2i) / 2, abs=1e-12)
    halves = [T.info_nce(image, text, 0.5, pids=pids, rows=r) for r in ((0, 1), (1, 3))]
    assert ((halves[0] + 2 * halves[1]) / 3).item() == pytest.approx((i2t + t2i) / 2, abs=1e-12)


# ---------------------------------------------------------------------------------- cls, cloth_adv
def test_classification_terms_hand_computed() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    pids = torch.tensor([0, 1])
    ce = (_ce([2, 0, 0], 0) + _ce([0, 1, 3], 1)) / 2
    assert T.id_classification(logits, pids).item() == pytest.approx(ce, abs=1e-6)
    assert T.adversarial_id(logits, pids).item() == pytest.approx(ce, abs=1e-6)
    uniform = (sum(_ce([2, 0, 0], k) for k in range(3)) + sum(_ce([0, 1, 3], k) for k in range(3))) / 6
    smoothed = 0.9 * ce + 0.1 * uniform
    assert T.id_classification(logits, pids, label_smoothing=0.1).item() == pytest.approx(smoothed, abs=1e-6)


# ---------------------------------------------------------------------------------------- cloth_match
def test_pair_match_hand_computed() -> None:
    image = _unit([1, 0], [1, 0], [1, 0])
    text = _unit([1, 0], [0, 1], [-1, 0])  # cos = 1, 0, -1
    y = torch.tensor([1, 0, 0])
    z = [1 / 0.5 - 1, 0 / 0.5 - 1, -1 / 0.5 - 1]  # tau 0.5, bias -1
    expected = (_bce(z[0], 1) + _bce(z[1], 0) + _bce(z[2], 0)) / 3
    assert T.pair_match(image, text, y, 0.5, -1.0).item() == pytest.approx(expected, abs=1e-9)
    w = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    weighted = (2 * _bce(z[0], 1) + _bce(z[1], 0)) / 3
    assert T.pair_match(image, text, y, 0.5, -1.0, weight=w).item() == pytest.approx(weighted, abs=1e-9)


def test_flipping_is_matched_changes_cloth_match() -> None:
    image = _unit([1, 0], [0, 1])
    text = _unit([0.9, 0.1], [0, -1])  # row 0 matches (cos 0.99), row 1 does not (cos -1)
    right = T.pair_match(image, text, torch.tensor([1, 0]), 0.1)
    flipped = T.pair_match(image, text, torch.tensor([0, 1]), 0.1)
    assert right < 0.1 < 2.0 < flipped


# ------------------------------------------------------------------------------------------ decouple
def test_decouple_hand_computed() -> None:
    id_proj, cloth_proj = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    assert T.decouple_seed(id_proj, cloth_proj).item() == pytest.approx((1 / math.sqrt(2) + 1) / 2, abs=1e-6)
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=torch.float64)
    eps = 1e-5  # relative: C = 1 / (1 + eps) for perfectly correlated dimensions
    assert T.decouple_xcorr(x, 2 * x + 1).item() == pytest.approx(1 / (1 + eps) ** 2, abs=1e-10)
    assert T.decouple_xcorr(x, -x).item() == pytest.approx(1 / (1 + eps) ** 2, abs=1e-10)
    a = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    b = torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])
    assert T.decouple_xcorr(a, b).item() == pytest.approx(0.0, abs=1e-12)


def test_xcorr_is_finite_with_dead_features() -> None:
    """A collapsed branch (all-zero ReLU output) must not turn the step into NaN."""
    dead = torch.zeros(8, 4, requires_grad=True)
    loss = T.decouple_xcorr(dead, torch.randn(8, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(dead.grad).all()


def test_xcorr_ignores_scale_shift_and_sign_so_rescaling_features_cannot_game_it() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = x @ torch.randn(6, 5, generator=g, dtype=torch.float64)
    base = T.decouple_xcorr(x, y)
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    assert T.decouple_xcorr(1e-4 * x * signs - 5.0, 1e3 * y).item() == pytest.approx(base.item(), rel=1e-9)
    per_dim = torch.tensor([0.5, 2.0, 1.0, 0.7, 1.5, 1.0], dtype=torch.float64)
    assert T.decouple_xcorr(x * per_dim, y).item() == pytest.approx(base.item(), rel=1e-4)


def test_seed_decouple_is_gamed_by_its_projectors_and_xcorr_is_not() -> None:
    """Frozen, *identical* id and cloth features (fully entangled): the seed's learnable
    projectors still drive its |cos| to ~0 without the features changing; the xcorr form owns
    no parameters, so it stays at the entangled value, far above independent features'."""
    torch.manual_seed(0)
    features = torch.randn(64, 16)  # frozen encoder output
    id_embeds, cloth_embeds = features, features.clone()
    id_proj, cloth_proj = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    opt = torch.optim.Adam([*id_proj.parameters(), *cloth_proj.parameters()], lr=0.05)
    start = T.decouple_seed(id_proj(id_embeds), cloth_proj(cloth_embeds)).item()
    for _ in range(150):
        loss = T.decouple_seed(id_proj(id_embeds), cloth_proj(cloth_embeds))
        opt.zero_grad()
        loss.backward()
        opt.step()
    gamed = T.decouple_seed(id_proj(id_embeds), cloth_proj(cloth_embeds)).item()
    assert start > 0.2 and gamed < 0.02
    assert torch.equal(id_embeds, cloth_embeds)  # nothing was disentangled

    entangled = T.decouple_xcorr(id_embeds, cloth_embeds)
    independent = T.decouple_xcorr(id_embeds, torch.randn(64, 16))
    assert not entangled.requires_grad  # nothing it could train: only changing the features helps
    assert entangled > 3 * independent


# -------------------------------------------------------------------------------------- fusion_match
def test_fusion_match_hand_computed() -> None:
    pos, neg = torch.tensor([0.0, 2.0]), torch.tensor([-1.0, 10.0, 3.0, 0.0])
    valid = torch.tensor([True, False, True, True])
    expected = (_bce(0, 1) + _bce(2, 1) + _bce(-1, 0) + _bce(3, 0) + _bce(0, 0)) / 5
    assert T.fusion_match(pos, neg, valid).item() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------------------------------ criterion
def fake_outputs(b: int = 8, dim: int = 6, hidden: int = 5, classes: int = 4) -> tuple[dict, dict]:
    """Model-shaped outputs (leaf tensors) and a batch, as the model would give them."""
    g = torch.Generator().manual_seed(0)

    def emb(d: int = dim) -> torch.Tensor:
        return F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()

    out = {k: emb() for k in ("image_embeds", "id_text_embeds", "cloth_image_embeds", "cloth_text_embeds",
                              "neg_cloth_text_embeds", "decouple_id", "decouple_cloth", "id_adv_embeds")}
    out |= {"id_embeds": emb(hidden), "cloth_embeds": emb(hidden), "temperature": torch.full((1,), 0.1),
            "id_logits": torch.randn(b, classes, generator=g).requires_grad_(),
            "cloth_adv_logits": torch.randn(b, classes, generator=g).requires_grad_(),
            "cloth_match_bias": torch.zeros(1, requires_grad=True),
            "fusion_pos_logits": torch.randn(b, generator=g),
            "fusion_neg_logits": torch.randn(2 * b, generator=g),
            "fusion_neg_valid": torch.ones(2 * b, dtype=torch.bool),
            "gate_image_weight": torch.rand(b, generator=g),
            "id_word_logits": torch.randn(b, 7, generator=g).requires_grad_()}
    batch = {K.PIDS: torch.arange(b) // 2, K.CLOTH_VALID: torch.ones(b, dtype=torch.bool),
             K.ID_INPUT_IDS: torch.randint(1, 7, (b, 4), generator=g),
             K.ID_ATTENTION_MASK: torch.ones(b, 4, dtype=torch.long),
             K.CLOTH_INPUT_IDS: torch.arange(b)[:, None].repeat(1, 3) + 1,  # every row its own text
             K.CLOTH_ATTENTION_MASK: torch.ones(b, 3, dtype=torch.long)}
    return out, batch


def _all_terms() -> DisentangleConfig:
    dcfg = DisentangleConfig()
    dcfg.loss_weights.fusion_match = 0.25
    dcfg.loss_weights.id_adv = 0.5
    dcfg.loss_weights.id_words = 0.5
    return dcfg


def test_criterion_total_is_the_weighted_sum_and_report_is_detached() -> None:
    dcfg = _all_terms()
    out, batch = fake_outputs()
    total, terms, report = Criterion(dcfg)(out, batch)
    assert set(terms) == set(TERM_NAMES)
    expected = sum(getattr(dcfg.loss_weights, n) * v for n, v in terms.items())
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    assert {"temperature", "mean_abs_cos_id_cloth", "xcorr_id_cloth", "cls_acc", "adv_acc",
            "gate_image_weight", "cloth_match_acc", "fusion_acc", "id_adv_acc"} <= set(report)
    assert all(v.dim() == 0 and not v.requires_grad for v in report.values())


@pytest.mark.parametrize("name", TERM_NAMES)
def test_a_zero_weight_skips_the_term(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} has weight 0 but was computed")

    dcfg = _all_terms()
    setattr(dcfg.loss_weights, name, 0.0)
    monkeypatch.setattr(Criterion, f"_{name}", refuse)
    out, batch = fake_outputs()
    total, terms, _ = Criterion(dcfg)(out, batch)
    assert name not in terms and len(terms) == len(TERM_NAMES) - 1
    assert torch.isfinite(total)


def test_pair_cloth_match_against_a_brute_force_reference() -> None:
    """Per valid row: own text (y=1), data negative (y=0), and the most similar valid cloth text of
    *another* person (y=0); invalid rows take no part. Traps: row 1 (same person as row 0) and
    row 3 (invalid) carry texts equal to row 0's image, so a wrong mask would mine them."""
    out, batch = fake_outputs(b=6)
    batch[K.PIDS] = torch.tensor([0, 0, 1, 1, 2, 2])
    batch[K.CLOTH_VALID] = torch.tensor([True, True, True, False, True, True])
    texts = out["cloth_text_embeds"].detach().clone()
    texts[1] = texts[3] = out["cloth_image_embeds"][0].detach()
    out["cloth_text_embeds"] = texts
    got = Criterion(DisentangleConfig())(out, batch)[1]["cloth_match"]

    img, neg = out["cloth_image_embeds"].detach(), out["neg_cloth_text_embeds"].detach()
    pids, valid = batch[K.PIDS].tolist(), batch[K.CLOTH_VALID].tolist()
    losses = []
    for i in range(6):
        if not valid[i]:
            continue
        others = [j for j in range(6) if pids[j] != pids[i] and valid[j]]
        hard = max(others, key=lambda j: float(img[i] @ texts[j]))
        assert hard not in (1, 3) or i != 0
        pairs = T.pair_match(img[i].expand(3, -1), torch.stack([texts[i], neg[i], texts[hard]]),
                             torch.tensor([1, 0, 0]), 0.1)
        losses.append(pairs)
    assert got.item() == pytest.approx(torch.stack(losses).mean().item(), abs=1e-6)


# ------------------------------------------------------------------------------ identity memory
def test_memory_keys_are_extra_image_to_text_negatives_hand_computed() -> None:
    image = _unit([1, 0], [0, 1])
    text = _unit([1, 0], [0.6, 0.8])
    bank = _unit([0, 1], [1, 1], [1, 0])
    usable = torch.tensor([True, False, True])
    s, m = (image @ text.T / 0.5).tolist(), (image @ bank.T / 0.5).tolist()
    i2t = (_ce([s[0][0], s[0][1], m[0][0], m[0][2]], 0) + _ce([s[1][0], s[1][1], m[1][0], m[1][2]], 1)) / 2
    t2i = (_ce([s[0][0], s[1][0]], 0) + _ce([s[0][1], s[1][1]], 1)) / 2  # the memory holds texts only
    got = T.info_nce(image, text, 0.5, memory=(bank, usable)).item()
    assert got == pytest.approx((i2t + t2i) / 2, abs=1e-12)
    none_usable = T.info_nce(image, text, 0.5, memory=(bank, torch.zeros(3, dtype=torch.bool))).item()
    assert none_usable == pytest.approx(T.info_nce(image, text, 0.5).item(), abs=1e-12)


def test_memory_rows_are_running_means_of_each_identity_and_skip_the_batch() -> None:
    from reid.losses.memory import IdentityMemory

    memory = IdentityMemory(4, momentum=0.5)
    assert memory.keys(torch.tensor([0])) is None  # nothing seen yet
    memory.update(torch.tensor([1, 1, 2]), _unit([1, 0], [0, 1], [1, 1]))
    bank, usable = memory.keys(torch.tensor([2]))
    assert usable.tolist() == [False, True, False, False]  # identity 2 is in the batch; 0 and 3 unseen
    torch.testing.assert_close(bank[1], _unit([1, 1])[0].float())  # the mean of its two rows, normalised
    memory.update(torch.tensor([1]), torch.tensor([[float("nan"), 0.0]]))  # a non-finite row is ignored
    torch.testing.assert_close(memory.bank[1], _unit([1, 1])[0].float())
    memory.update(torch.tensor([1]), _unit([1, 0]))
    expected = F.normalize(0.5 * _unit([1, 1])[0] + 0.5 * _unit([1, 0])[0], dim=0).float()
    torch.testing.assert_close(memory.bank[1], expected)
    again = IdentityMemory(4, momentum=0.5)
    again.load_state_dict(memory.state_dict())
    torch.testing.assert_close(again.keys(torch.tensor([2]))[0], memory.keys(torch.tensor([2]))[0])


def test_the_criterion_updates_its_memory_after_the_loss() -> None:
    from reid.config import LossWeights

    dcfg = DisentangleConfig(loss_weights=LossWeights(cls=0, bio=0, cloth=0, cloth_adv=0, cloth_match=0, decouple=0))
    dcfg.info_nce.memory = True
    criterion = Criterion(dcfg, num_identities=5)
    g = torch.Generator().manual_seed(0)
    out = {"image_embeds": F.normalize(torch.randn(4, 8, generator=g), dim=1),
           "id_text_embeds": F.normalize(torch.randn(4, 8, generator=g), dim=1), "temperature": torch.tensor([0.1])}
    batch = {K.PIDS: torch.tensor([0, 0, 1, 1])}
    first, _, _ = criterion(out, batch)
    assert first.item() == pytest.approx(T.info_nce(out["image_embeds"], out["id_text_embeds"], 0.1).item(), abs=1e-6)
    assert criterion.memory.seen.tolist() == [True, True, False, False, False]
    batch2 = {K.PIDS: torch.tensor([2, 2, 3, 3])}
    second, _, _ = criterion(out, batch2)
    assert second.item() > first.item()  # identities 0 and 1 are now extra negatives


def test_the_clothing_adversary_contrasts_with_detached_clothing_texts() -> None:
    g = torch.Generator().manual_seed(3)
    adversary = F.normalize(torch.randn(5, 4, generator=g), dim=-1).requires_grad_()
    cloth = F.normalize(torch.randn(5, 4, generator=g), dim=-1).requires_grad_()
    valid = torch.tensor([True, True, False, True, True])
    loss = T.clothing_adversary(adversary, cloth, valid, 0.2)
    assert loss.item() == pytest.approx(T.cloth_contrastive(adversary, cloth, valid, 0.2).item(), abs=1e-12)
    loss.backward()
    assert cloth.grad is None and adversary.grad.abs().sum() > 0  # the texts are targets only


def test_identity_words_hand_computed() -> None:
    """Two texts over a 5-token vocabulary (0 = padding): row 0 = [1, 2, pad], row 1 = [2, 3, 3].
    Words of the batch: {1, 2, 3}; token 4 is in neither text and token 0 is only padding."""
    ids = torch.tensor([[1, 2, 0], [2, 3, 3]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    targets = T.word_targets(ids, mask, 5)
    assert targets.tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0]]
    logits = torch.tensor([[9.0, 2.0, 0.0, -1.0, 5.0], [9.0, -3.0, 1.0, 0.5, 5.0]])
    columns = targets.amax(dim=0) > 0
    assert columns.tolist() == [False, True, True, True, False]

    def bce(z: float, y: float) -> float:
        p = 1 / (1 + math.exp(-z))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    expected = (bce(2, 1) + bce(0, 1) + bce(-1, 0) + bce(-3, 0) + bce(1, 1) + bce(0.5, 1)) / 6
    assert T.identity_words(logits, targets, columns).item() == pytest.approx(expected, rel=1e-6)


def test_the_criterion_scores_id_words_over_the_batch_words_only() -> None:
    """Columns of tokens no identity text in the batch uses do not count, whatever their logits."""
    dcfg = DisentangleConfig()
    for name in ("cls", "bio", "cloth", "cloth_adv", "cloth_match", "decouple"):
        setattr(dcfg.loss_weights, name, 0.0)
    dcfg.loss_weights.id_words = 1.0
    out, batch = fake_outputs()
    _, terms, _ = Criterion(dcfg)(out, batch)
    batch[K.ID_INPUT_IDS] = batch[K.ID_INPUT_IDS].clamp(max=5)  # token 6 now unused
    used = T.word_targets(batch[K.ID_INPUT_IDS], batch[K.ID_ATTENTION_MASK], 7).amax(dim=0) > 0
    assert not used[6] and not used[0]
    again = Criterion(dcfg)(out, batch)[1]["id_words"]
    out["id_word_logits"] = out["id_word_logits"].detach().clone()
    out["id_word_logits"][:, 6] = 100.0
    assert Criterion(dcfg)(out, batch)[1]["id_words"].item() == pytest.approx(again.item(), rel=1e-6)
    assert torch.isfinite(terms["id_words"])
