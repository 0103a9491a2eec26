"""The attribute-oracle ceiling: how well a ranker that *knows* the ground truth does.

On the synthetic dataset every caption names some of its person's identity factors (gender, age,
height, build, skin, hair style and colour, beard; ``synth_factors.json`` records which, per
caption). The oracle scores a gallery image by the number of factors the query names on which the
image's person agrees with the query's person, and breaks ties at random: it compares only what
the query says about identity, never clothing. A learned model that reads identity from text and
images can at best match it on the clothing-change protocol (where clothing cannot help), so every
learned clothing-change number is read as a fraction of the oracle's.

The random tie-break is a random order of the gallery, the same for every query of one draw;
the reported figures are the mean over ``draws`` draws.

The **perceived-fact ranker** (:func:`perceived_metrics`) is the same ranker with the ground truth of
the gallery replaced by what an image representation perceives of it: per fact, a linear probe's
probabilities. It scores a gallery image by the log-likelihood of the facts the query names,
sum over named facts f of log p_f(query's value | image): what a ranker gets that reads each
identity fact from those features with a linear probe, independently of the others. Beside a learned model's clothing-invariant R1 it
says how much of the gap to the oracle is perception (what the features hold) and how much is
matching (how the model uses it). :func:`known_log_probs` stands in a perfect probe for one fact:
with it, the ranker says what perceiving that one fact perfectly would be worth.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from reid.data.synth_text import IDENTITY_FACTS, identity_words
from reid.errors import DataError

DRAWS = 10  # tie-break draws averaged
UNSEEN = -30.0  # log-probability the perceived-fact ranker gives a value its probe never saw


def identity_values(entry: dict) -> dict[str, str]:
    """The word a caption uses for each identity factor of one image's person (``entry`` is its
    ``synth_factors.json`` record): thresholded words for height / build / skin, the rest as is."""
    ident = entry["identity"]
    words = ident.get("words") or identity_words(_Attrs(ident))
    return {
        "gender": str(ident["gender"]), "age": str(ident["age"]), "height": words["height"],
        "build": words["build"], "skin": words["skin"], "hair_style": str(ident["hair_style"]),
        "hair_colour": str(ident["hair_colour"]), "beard": str(bool(ident["beard"])),
    }


class _Attrs:
    def __init__(self, values: dict) -> None:
        self.__dict__.update(values)


def caption_facts(factors: dict[str, dict], query_paths: Sequence[str]) -> list[list[str]]:
    """The identity factors each query caption names. Queries are the split's captions in record
    order (reid.data.tables), so the k-th query of an image is its k-th caption."""
    seen: dict[str, int] = {}
    facts = []
    for path in query_paths:
        k = seen.get(path, 0)
        seen[path] = k + 1
        per_caption = factors[path].get("caption_facts")
        if per_caption is None or k >= len(per_caption):
            raise DataError(f"synth_factors.json: {path}: no caption_facts for caption {k} "
                            "(made by an older reid-synth; generate the dataset again)")
        facts.append(list(per_caption[k]))
    return facts


def _encode(values: list[dict[str, str]], facts: Optional[list[list[str]]], vocab: dict) -> Tensor:
    """One-hot rows over (factor, value); a query row only sets the factors its caption names, so
    <query, gallery> counts the named factors on which the two agree."""
    out = torch.zeros(len(values), len(vocab), dtype=torch.float64)
    for i, row in enumerate(values):
        for name in facts[i] if facts is not None else IDENTITY_FACTS:
            out[i, vocab[(name, row[name])]] = 1.0
    return out


def oracle_embeddings(
    factors: dict[str, dict], query_paths: Sequence[str], gallery_paths: Sequence[str], seed: int = 0
) -> tuple[Tensor, Tensor]:
    """(Q, D) and (G, D) float64 rows whose dot product is the oracle score: the number of factors
    the query names that agree, plus a tie-break in [0, 0.5) that orders the gallery at random."""
    q_values = [identity_values(factors[p]) for p in query_paths]
    g_values = [identity_values(factors[p]) for p in gallery_paths]
    pairs = sorted({(n, r[n]) for r in q_values + g_values for n in IDENTITY_FACTS})
    vocab = {pair: i for i, pair in enumerate(pairs)}
    query = _encode(q_values, caption_facts(factors, query_paths), vocab)
    gallery = _encode(g_values, None, vocab)
    tie = torch.rand(len(gallery_paths), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (torch.cat([query, torch.ones(len(query), 1, dtype=torch.float64)], 1),
            torch.cat([gallery, 0.5 * tie[:, None]], 1))


def oracle_metrics(
    factors: dict[str, dict], query_paths: Sequence[str], gallery_paths: Sequence[str],
    query_pids: Tensor, gallery_pids: Tensor, *, query_groups: Optional[Tensor] = None,
    gallery_groups: Optional[Tensor] = None, draws: int = DRAWS, metrics_fn: Any = None,
) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP of the oracle under a protocol (groups as for
    :func:`reid.evaluation.retrieval_metrics`), the mean over ``draws`` tie-break draws."""
    if metrics_fn is None:
        from reid.evaluation import retrieval_metrics as metrics_fn
    total: dict[str, float] = {}
    for seed in range(draws):
        query, gallery = oracle_embeddings(factors, query_paths, gallery_paths, seed)
        result = metrics_fn(query, gallery, query_pids, gallery_pids, query_groups=query_groups,
                            gallery_groups=gallery_groups)
        for name, value in result.items():
            total[name] = total.get(name, 0.0) + float(value) / draws
    return total


def perceived_embeddings(
    factors: dict[str, dict], query_paths: Sequence[str], log_probs: dict[str, tuple[list[str], Tensor]]
) -> tuple[Tensor, Tensor]:
    """(Q, D) and (G, D) float64 rows whose dot product is the perceived-fact ranker's score:
    the sum, over the facts each query names, of the gallery image's log-probability of the query
    person's value. ``log_probs``: fact -> (the probe's classes, (G, C) log-probabilities of each
    gallery image). A fact without a probe is skipped; a value the probe never saw scores
    :data:`UNSEEN`."""
    names = [n for n in IDENTITY_FACTS if n in log_probs]
    vocab = {(n, c): i for i, (n, c) in enumerate((n, c) for n in names for c in log_probs[n][0])}
    unseen = {n: len(vocab) + k for k, n in enumerate(names)}  # one column per fact for unseen values
    num_gallery = log_probs[names[0]][1].shape[0] if names else 0
    gallery = torch.full((num_gallery, len(vocab) + len(names)), UNSEEN, dtype=torch.float64)
    for n in names:
        classes, lp = log_probs[n]
        gallery[:, [vocab[n, c] for c in classes]] = lp.to(torch.float64)
    query = torch.zeros(len(query_paths), gallery.shape[1], dtype=torch.float64)
    for i, (path, named) in enumerate(zip(query_paths, caption_facts(factors, query_paths))):
        values = identity_values(factors[path])
        for n in named:
            if n in unseen:
                query[i, vocab.get((n, values[n]), unseen[n])] = 1.0
    return query, gallery


def known_log_probs(factors: dict[str, dict], gallery_paths: Sequence[str], name: str) -> tuple[list[str], Tensor]:
    """A perfect probe of fact ``name`` on the gallery, in :func:`perceived_embeddings`' form: the
    fact's values (those of the gallery's people) and (G, C) log-probabilities, 0 for the image's
    own value and :data:`UNSEEN` for the others."""
    values = [identity_values(factors[p])[name] for p in gallery_paths]
    classes = sorted(set(values))
    log_probs = torch.full((len(values), len(classes)), UNSEEN, dtype=torch.float64)
    log_probs[torch.arange(len(values)), torch.tensor([classes.index(v) for v in values])] = 0.0
    return classes, log_probs


def perceived_metrics(
    factors: dict[str, dict], query_paths: Sequence[str], log_probs: dict[str, tuple[list[str], Tensor]],
    query_pids: Tensor, gallery_pids: Tensor, *, query_groups: Optional[Tensor] = None,
    gallery_groups: Optional[Tensor] = None, metrics_fn: Any = None,
) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP of the perceived-fact ranker (:func:`perceived_embeddings`) under a
    protocol (groups as for :func:`reid.evaluation.retrieval_metrics`)."""
    if metrics_fn is None:
        from reid.evaluation import retrieval_metrics as metrics_fn
    query, gallery = perceived_embeddings(factors, query_paths, log_probs)
    result = metrics_fn(query, gallery, query_pids, gallery_pids, query_groups=query_groups,
                        gallery_groups=gallery_groups)
    return {name: float(value) for name, value in result.items()}
