"""The loss terms, one pure function each (no parameters, no state, no collectives).

term name      function                      inputs
-------------  ----------------------------  ----------------------------------------------------
info_nce       :func:`info_nce`              image_embeds, id_text_embeds (global batch)
cls            :func:`id_classification`     id_logits, pids
bio            :func:`sdm`                   image_embeds, id_text_embeds, pids (global batch)
cloth          :func:`cloth_contrastive`     cloth_image_embeds, cloth_text_embeds, cloth_valid
cloth_adv      :func:`adversarial_id`        cloth_adv_logits (behind the GRL), pids
cloth_match    :func:`pair_match` (pair) or :func:`cloth_match_seed` (seed)
decouple       :func:`decouple_xcorr` (xcorr) or :func:`decouple_seed` (seed)
fusion_match   :func:`fusion_match`          fusion_pos_logits, fusion_neg_logits, fusion_neg_valid
id_adv         :func:`clothing_adversary`    id_adv_embeds (behind the GRL), cloth_text_embeds, cloth_valid
id_words       :func:`identity_words`        id_word_logits, word_targets(id_input_ids), the batch's words

Contrastive functions take the *global* batch (gathered across processes, or the local batch
with one process) and an optional ``rows=(start, stop)``: the query rows this process owns. The
result is that slice's share of the loss scaled by ``N / (stop - start)``, so the mean over equal
slices that partition the batch equals the full loss, and with gathering *with gradient* the
averaged gradient equals the full loss's gradient (open_clip's ``local_loss``). Similarities and
losses are computed in float32 whatever the embeddings' dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Rows = tuple[int, int]
_MASKED = -1e9  # logit of an excluded key: exp() underflows to 0, and stays finite (no NaN)


def _f(x: Tensor) -> Tensor:
    """At least float32 (bf16/fp16 embeddings are promoted; float64 stays for exactness checks)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _span(n: int, rows: Rows | None) -> Rows:
    return (0, n) if rows is None else rows


def _row_ce(
    query: Tensor, keys: Tensor, targets: Tensor, temperature: Tensor | float, key_valid: Tensor | None,
    drop: Tensor | None = None,
) -> Tensor:
    """Per-query cross-entropy of ``query @ keys.T / temperature`` against column ``targets``;
    invalid keys, and ``drop`` (b, N) per query, take no part in the softmax."""
    logits = query @ keys.T / temperature  # (b, N)
    if key_valid is not None:
        logits = logits.masked_fill(~key_valid[None, :], _MASKED)
    if drop is not None:
        logits = logits.masked_fill(drop, _MASKED)
    return F.cross_entropy(logits, targets, reduction="none")  # (b,)


def info_nce(
    image: Tensor,
    text: Tensor,
    temperature: Tensor | float,
    *,
    valid: Tensor | None = None,
    rows: Rows | None = None,
    pids: Tensor | None = None,
    memory: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Symmetric InfoNCE (the seed's ``info_nce_loss``); row i of ``image`` and ``text`` is a pair.

    s_ij = <image_i, text_j> / tau  (inputs L2-normalised, (N, D)),
    L = 1/(2|V|) * sum_{i in V} [ -log softmax_{j in V}(s_i.)_i  - log softmax_{j in V}(s_.i)_i ]
    where V = {i : valid_i} (all rows when ``valid`` is None): invalid rows are neither queries
    nor keys. With ``pids``, the other rows of a query's own person are left out of its softmax
    (the seed counts them as negatives, which P x K batches make contradictory: K - 1 keys of each
    row describe the same person). ``memory = (keys (M, D), usable (M,))`` adds the usable keys as
    further negatives of the image -> text direction (reid.losses.memory: other identities' texts).
    With ``rows``, only those query rows are summed (see the module docstring).
    """
    image, text = _f(image), _f(text)
    n = image.shape[0]
    start, stop = _span(n, rows)
    targets = torch.arange(start, stop, device=image.device)
    drop = None
    if pids is not None:  # other rows of the query's own person are not negatives: leave them out
        drop = pids[start:stop, None] == pids[None, :]  # (b, N)
        drop[torch.arange(stop - start, device=drop.device), targets] = False
    i2t_keys, i2t_valid, i2t_drop = text, valid, drop
    if memory is not None:  # extra columns after the batch's: the target indices stay the same
        bank, usable = memory
        i2t_keys = torch.cat([text, _f(bank).to(text.dtype)])
        i2t_valid = torch.cat([valid if valid is not None else torch.ones(n, dtype=torch.bool, device=usable.device), usable])
        if drop is not None:
            i2t_drop = torch.cat([drop, drop.new_zeros(stop - start, len(bank))], dim=1)
    i2t = _row_ce(image[start:stop], i2t_keys, targets, temperature, i2t_valid, i2t_drop)
    t2i = _row_ce(text[start:stop], image, targets, temperature, valid, drop)
    per_row = 0.5 * (i2t + t2i)  # (b,)
    if valid is None:
        return per_row.mean()
    total = torch.where(valid[start:stop], per_row, 0.0).sum()
    return total * (n / (stop - start)) / valid.sum().clamp(min=1)


def cloth_contrastive(
    cloth_image: Tensor,
    cloth_text: Tensor,
    valid: Tensor,
    temperature: Tensor | float,
    *,
    rows: Rows | None = None,
) -> Tensor:
    """``cloth``: :func:`info_nce` between cloth image and cloth text embeddings over valid rows.

    Only rows whose caption has a clothing part (``cloth_valid``) take part, as queries and as keys;
    every pair here is a matched one (the image's own clothing text, ``is_matched = 1``).
    """
    return info_nce(cloth_image, cloth_text, temperature, valid=valid, rows=rows)


# ``cloth_match`` (form: seed): the seed's in-batch InfoNCE with diagonal labels. The seed ignores
# ``is_matched`` and so trains its ``is_matched = 0`` rows as positives; restricted to matched rows it
# is the same quantity as ``cloth`` (the criterion reuses that term's value when both are on).
cloth_match_seed = cloth_contrastive


def sdm(
    image: Tensor,
    text: Tensor,
    pids: Tensor,
    temperature: Tensor | float,
    *,
    rows: Rows | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """``bio``: identity-level alignment, IRRA's similarity-distribution matching (SDM).

    p_i = softmax_j(<image_i, text_j> / tau),  q_ij = [pid_i = pid_j] / sum_k [pid_i = pid_k],
    L = 1/2 * mean_i [ KL(p_i || q_i) + KL(p'_i || q_i) ],  KL(p || q) = sum_j p_j (log p_j - log(q_j + eps))
    with p' the text->image direction. Every caption of the same person is a positive, so P x K
    batches do not push a person away from their own other captions.
    """
    image, text = _f(image), _f(text)
    start, stop = _span(image.shape[0], rows)
    same = (pids[start:stop, None] == pids[None, :]).to(image.dtype)  # (b, N)
    log_q = torch.log(same / same.sum(dim=1, keepdim=True) + eps)

    def kl(logits: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)  # (b,)

    i2t = kl(image[start:stop] @ text.T / temperature)
    t2i = kl(text[start:stop] @ image.T / temperature)
    return 0.5 * (i2t + t2i).mean()


def id_classification(logits: Tensor, pids: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """``cls``: L = CE(id_logits, pid), mean over the batch (optionally label-smoothed)."""
    return F.cross_entropy(_f(logits), pids, label_smoothing=label_smoothing)


def adversarial_id(logits: Tensor, pids: Tensor) -> Tensor:
    """``cloth_adv``: L = CE(cloth_classifier(GRL(cloth_embeds)), pid), mean over the batch.

    The classifier learns to recognise the person from the clothing features; the gradient
    reversal in the model hands the branch below it ``-alpha`` times that gradient, so the
    clothing features are pushed to carry no identity.
    """
    return F.cross_entropy(_f(logits), pids)


def clothing_adversary(
    adversary: Tensor,
    cloth_text: Tensor,
    valid: Tensor,
    temperature: Tensor | float,
    *,
    rows: Rows | None = None,
) -> Tensor:
    """``id_adv``: the adversary's InfoNCE against the (detached) clothing-text embeddings.

    ``adversary`` = normalise(id_adversary(GRL(id_embeds))): the head learns to pick each image's
    own clothing caption among the batch's from the identity features alone; the GRL hands the
    identity branch -alpha times that gradient, so identity features that let it succeed are pushed
    away. The texts are detached: the adversary must not reshape the clothing text space. Rows
    without a clothing part take no part (as in ``cloth``).
    """
    return info_nce(adversary, cloth_text.detach(), temperature, valid=valid, rows=rows)


def word_targets(input_ids: Tensor, attention_mask: Tensor, vocab_size: int) -> Tensor:
    """(B, V) float: 1 where row i's text uses token v (padding excluded), else 0."""
    targets = torch.zeros(input_ids.shape[0], vocab_size, device=input_ids.device)
    return targets.scatter_reduce(1, input_ids, attention_mask.to(targets.dtype), reduce="amax")


def identity_words(logits: Tensor, targets: Tensor, columns: Tensor) -> Tensor:
    """``id_words``: which of the batch's identity words describe this image.

    ``logits`` (B, V) from the identity features, ``targets`` (B, V) from :func:`word_targets` on
    the identity texts, ``columns`` (V,) bool: the words any identity text of the *global* batch
    uses. L = mean over rows i and those words v of BCE(sigmoid(logits_iv), targets_iv). Only the
    batch's own words count, so every column has rows of both kinds whenever the batch's people
    differ in that word ("short", "long", "man"); tokens every text shares (the articles, [CLS])
    are easy columns that add a constant's worth of gradient.
    """
    return F.binary_cross_entropy_with_logits(logits[:, columns].float(), targets[:, columns].float())


def pair_match(
    image: Tensor,
    text: Tensor,
    is_matched: Tensor,
    temperature: Tensor | float,
    bias: Tensor | float = 0.0,
    *,
    weight: Tensor | None = None,
    denom: Tensor | float | None = None,
) -> Tensor:
    """``cloth_match`` (form: pair): logistic loss on each labelled pair (image_k, text_k, y_k).

    z_k = cos(image_k, text_k) / tau + b,   l_k = BCE(sigmoid(z_k), y_k) with y_k = is_matched_k,
    L = sum_k w_k l_k / D,  D = sum_k w_k unless ``denom`` is given (w_k = 1 by default).
    """
    z = F.cosine_similarity(_f(image), _f(text), dim=-1) / temperature + bias  # (K,)
    losses = F.binary_cross_entropy_with_logits(z, is_matched.to(z.dtype), reduction="none")
    if weight is None:
        weight = torch.ones_like(losses)
    if denom is None:
        denom = weight.sum().clamp(min=1e-12)
    return (losses * weight).sum() / denom


def decouple_seed(id_projected: Tensor, cloth_projected: Tensor) -> Tensor:
    """``decouple`` (form: seed): L = mean_i |cos(P_id(id_embeds_i), P_cloth(cloth_embeds_i))|.

    P_id / P_cloth are learnable projectors, so they can reach L = 0 by mapping into orthogonal
    subspaces without the features changing at all (tests/test_losses.py shows it).
    """
    return F.cosine_similarity(_f(id_projected), _f(cloth_projected), dim=-1).abs().mean()


def decouple_xcorr(id_embeds: Tensor, cloth_embeds: Tensor, eps: float = 1e-5) -> Tensor:
    """``decouple`` (form: xcorr): mean squared cross-correlation over the batch.

    Z = (X - mean) / sqrt(var + eps * mean(var)) per dimension over the N rows,
    C = Z_idᵀ Z_cloth / N  (H_id x H_cloth Pearson correlations),  L = mean_jk C_jk².
    L = 0 iff no id dimension is linearly correlated with any cloth dimension across the batch.
    It owns no parameters and is invariant to shifts, sign flips and a common rescaling of either
    input (eps is relative to the mean variance; a single dimension would have to shrink to ~1e-3
    of the others' scale before eps discounts it), so only removing shared information lowers it.
    Sampling floor ~1/N for independent features; dead (constant) dimensions contribute 0.
    """
    n = id_embeds.shape[0]
    z_id = _standardise(_f(id_embeds), eps)
    z_cloth = _standardise(_f(cloth_embeds), eps)
    corr = z_id.T @ z_cloth / n  # (H, H)
    return corr.pow(2).mean()


def _standardise(x: Tensor, eps: float) -> Tensor:
    centred = x - x.mean(dim=0, keepdim=True)
    var = centred.pow(2).mean(dim=0, keepdim=True)  # (1, H)
    # The floor only matters when every dimension is dead (all-zero ReLU output): it keeps value
    # and gradient finite there (rsqrt' ~ floor^-1.5 = 1e30, times a zero centred input).
    return centred * torch.rsqrt(var + eps * var.mean() + 1e-20)  # dead dimensions -> 0


def fusion_match(pos_logits: Tensor, neg_logits: Tensor, neg_valid: Tensor | None = None) -> Tensor:
    """``fusion_match``: BCE of the fusion head on matched pairs (y=1) and hard negatives (y=0).

    L = [sum_i BCE(z+_i, 1) + sum_j v_j BCE(z-_j, 0)] / (B + sum_j v_j)
    (v_j = 0 for a negative that could not be mined: no other person in the batch).
    """
    pos_logits, neg_logits = _f(pos_logits), _f(neg_logits)
    pos = F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits), reduction="sum")
    neg = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), reduction="none")
    if neg_valid is None:
        return (pos + neg.sum()) / (pos_logits.shape[0] + neg_logits.shape[0])
    neg = torch.where(neg_valid, neg, 0.0).sum()
    return (pos + neg) / (pos_logits.shape[0] + neg_valid.sum())
