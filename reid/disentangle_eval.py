"""Disentanglement, measured where the ground-truth factors are known (the synthetic dataset).

``reid-synth`` writes ``synth_factors.json`` beside ``reid_raw.json``: per image ``file_path`` the
person, the ``outfit_id`` (unique over the dataset) and the identity / clothing factors. From it:

* **Clothing-change retrieval** (the standard cloth-changing ReID protocol): each query describes
  a person in one outfit; that person's gallery images in the *same* outfit are removed from its
  gallery, so only their other outfits count as hits. :func:`outfit_ids` gives the groups that
  :func:`reid.evaluation.retrieval_metrics` removes.
* **Linear probes** on frozen features: the identity embedding (``identity``, 256-d, what the
  clothing-invariant mode retrieves with) and the branch features (``id``, ``cloth``).
  ``-> upper colour`` (fit on the train split's images, scored on the evaluated split: clothing left
  in the identity features is leakage), ``-> gender / age / height / build / skin / hair style /
  hair colour`` (the identity factors, same split protocol, from 50 evaluated people on: what the
  identity features know), ``-> person`` (identities of the evaluated split, fit on some of each
  person's outfits and scored on another, every outfit in turn: for the clothing branch that is
  identity leaking into clothing). Chance is the majority-class rate of the scored set.
  ``text -> gender ... hair colour``: the same identity-factor probes on the **identity text**
  embedding of the captions (fit on the train split's identity parts, scored on the evaluated
  split's queries). What the text side reads is what retrieval could use; an identity fact the
  text embedding reads and the image embedding does not is a limit of the image side.
* ``mean_abs_cos``: mean |cos(id_embeds, cloth_embeds)| per image.

Datasets without the file (CUHK-PEDES, ICFG-PEDES, RSTPReid) have none of this but the |cos|.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from reid.errors import DataError

FACTORS_FILE = "synth_factors.json"
PROBE_STEPS = 100  # L-BFGS iterations; the probes are small, smooth convex problems
PROBE_WEIGHT_DECAY = 1e-4  # on the summed squared weights; 1e-3 already blunts a clean linear factor


def load_factors(root: Path) -> Optional[dict[str, dict]]:
    """``synth_factors.json`` of the dataset at ``root`` ({file_path: factors}), or None if absent."""
    path = Path(root) / FACTORS_FILE
    if not path.is_file():
        return None
    try:
        factors = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(factors, dict):
        raise DataError(f"{path}: expected a mapping of file_path -> factors")
    return factors


def missing_factors(factors: dict[str, dict], file_paths: Sequence[str]) -> list[str]:
    """The file paths that have no factors (the protocols need every one)."""
    return [p for p in file_paths if p not in factors]


def outfit_ids(factors: dict[str, dict], file_paths: Sequence[str]) -> Tensor:
    """``(N,)`` int64 outfit of each file (every path must be in ``factors``)."""
    return torch.tensor([int(factors[p]["outfit_id"]) for p in file_paths], dtype=torch.int64)


def factor(factors: dict[str, dict], file_paths: Sequence[str], section: str, name: str) -> list[str]:
    """One factor of each file, e.g. ``("clothing", "upper_colour")`` or ``("identity", "hair_colour")``."""
    return [str(factors[p][section][name]) for p in file_paths]


def train_image_loader(
    cfg: Any, tokenizer: Any, root: Path, *, batch_size: int, rank: int = 0, world_size: int = 1,
    pixel_mean: Optional[Sequence[float]] = None, pixel_std: Optional[Sequence[float]] = None,
) -> tuple[Any, list[str]]:
    """A gallery-style loader over the train split's distinct images (sharded like the evaluation
    data; ``cfg`` is the DataConfig), and their file paths in loader order."""
    from torch.utils.data import DataLoader

    from reid.data.loader import CheckedGalleryLoader, GalleryDataset, collate_gallery
    from reid.data.samplers import ShardSampler
    from reid.data.tables import build_tables
    from reid.data.transforms import EvalTransform, pixel_stats

    table = build_tables(cfg, tokenizer, root).train  # one row per caption
    _, first = np.unique(np.asarray(list(table["image_id"])), return_index=True)
    images = table.select(sorted(first.tolist()))
    transform = EvalTransform(cfg.image_size, *pixel_stats((cfg.pixel_mean, cfg.pixel_std), (pixel_mean, pixel_std)))
    loader = DataLoader(GalleryDataset(images, transform), batch_size=batch_size, collate_fn=collate_gallery,
                        sampler=ShardSampler(len(images), rank, world_size), num_workers=cfg.num_workers)
    return CheckedGalleryLoader(loader), list(images["file_path"])


# --------------------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------------------


@dataclass
class ProbeResult:
    accuracy: float  # percent, on the scored set
    chance: float  # percent: the scored set's majority-class rate
    num_train: int  # per fit (the mean over folds for the cross-outfit probe)
    num_test: int
    num_classes: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fit_log_proba(
    train_x: Tensor, train_y: Sequence[Any], test_x: Tensor,
    *, weight_decay: float = PROBE_WEIGHT_DECAY, steps: int = PROBE_STEPS,
) -> tuple[list[Any], Tensor]:
    """Multinomial logistic regression (L-BFGS from zeros, float64, features standardised on the
    train set) fit on ``(train_x, train_y)``: its classes (sorted) and the ``(N, C)`` float64
    log-probabilities of each row of ``test_x``. Labels may be any hashables. Deterministic."""
    classes = sorted(set(train_y), key=str)
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in train_y])
    x = train_x.detach().to("cpu", torch.float64)  # (N, D)
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few thousand flops per op: intra-op threads only add waiting (10x on 2 busy cores)
    try:
        with torch.enable_grad():
            opt.step(closure)
    finally:
        torch.set_num_threads(threads)
    tx = (test_x.detach().to("cpu", torch.float64) - mean) / std
    return classes, torch.log_softmax((tx @ weight + bias).detach(), dim=1)


def fit_predict(train_x: Tensor, train_y: Sequence[Any], test_x: Tensor, **kwargs: Any) -> list[Any]:
    """:func:`fit_log_proba`'s most probable label for each row of ``test_x``."""
    classes, log_probs = fit_log_proba(train_x, train_y, test_x, **kwargs)
    return [classes[i] for i in log_probs.argmax(1).tolist()]


def _result(predicted: Sequence[Any], truth: Sequence[Any], num_train: int, num_classes: int) -> ProbeResult:
    """Accuracy; a test label never seen in training counts as an error."""
    correct = sum(p == t for p, t in zip(predicted, truth))
    _, counts = np.unique(np.asarray([str(t) for t in truth]), return_counts=True)
    return ProbeResult(accuracy=100.0 * correct / len(truth), chance=100.0 * float(counts.max()) / len(truth),
                       num_train=num_train, num_test=len(truth), num_classes=num_classes)


def linear_probe(train_x: Tensor, train_y: Sequence[Any], test_x: Tensor, test_y: Sequence[Any], **kwargs: Any) -> ProbeResult:
    """:func:`fit_predict` on the train set, scored on ``(test_x, test_y)``."""
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError(f"a probe needs training and test samples, got {len(train_x)} and {len(test_x)}")
    return _result(fit_predict(train_x, train_y, test_x, **kwargs), test_y, len(train_y), len(set(train_y)))


def outfit_folds(pids: Tensor, outfits: Tensor) -> Tensor:
    """``(N,)`` fold of each image: the rank of its outfit among its person's outfits (0, 1, ...);
    -1 for a person seen in one outfit only (never scored: nothing to cross to)."""
    folds = torch.full((len(pids),), -1, dtype=torch.long)
    for pid in pids.unique():
        mine = pids == pid
        own = outfits[mine].unique()  # sorted
        if len(own) > 1:
            folds[mine] = torch.searchsorted(own, outfits[mine])
    return folds


def cross_outfit_probe(feats: Tensor, pids: Tensor, outfits: Tensor, **kwargs: Any) -> ProbeResult:
    """Predict the person across a change of clothes: for each fold f, fit on every image not in
    fold f and score fold f's images (each person's f-th outfit, unseen in fitting); pooled."""
    folds, labels = outfit_folds(pids, outfits), pids.tolist()
    predicted, truth, fitted = [], [], 0
    for f in range(int(folds.max()) + 1):
        test = folds == f
        train_idx, test_idx = (~test).nonzero().squeeze(1).tolist(), test.nonzero().squeeze(1).tolist()
        predicted += fit_predict(feats[~test], [labels[i] for i in train_idx], feats[test], **kwargs)
        truth += [labels[i] for i in test_idx]
        fitted += len(train_idx)
    if not truth:
        raise ValueError("a cross-outfit probe needs a person seen in two outfits")
    return _result(predicted, truth, fitted // (int(folds.max()) + 1), len(set(labels)))


# Probed features: the identity embedding the clothing-invariant mode retrieves with (through the
# clothing eraser where the model has one), and the raw branch features below the shared heads.
# source -> the output keys it reads, the first present wins
SOURCES = {"identity": ("invariant_image_embeds", "image_embeds"), "id": ("id_embeds",), "cloth": ("cloth_embeds",)}
CLOTHING_PROBES = {"upper_colour": ("clothing", "upper_colour")}  # name -> (section, factor)
IDENTITY_PROBES = ("gender", "age", "height", "build", "skin", "hair_style", "hair_colour")
# (source, target) pairs that measure leakage; the others are references (what a branch should hold)
LEAKAGE = {("identity", "upper_colour"), ("id", "upper_colour"), ("cloth", "person")}


def train_query_loader(cfg: Any, tokenizer: Any, root: Path, *, batch_size: int, rank: int = 0,
                       world_size: int = 1) -> tuple[Any, list[str]]:
    """A query-style loader whose ``id`` text is the identity part of each train caption (tokenized
    here: the train table's ``id_input_ids`` hold whole captions when ``data.id_text`` is ``full``),
    and each caption's image file path in loader order."""
    import datasets
    from torch.utils.data import DataLoader

    from reid.data.loader import QueryCollate, QueryDataset, _pad_id
    from reid.data.samplers import ShardSampler
    from reid.data.tables import build_tables

    table = build_tables(cfg, tokenizer, root).train  # one row per caption
    ids = tokenizer(list(table["id_caption"]), truncation=True, max_length=cfg.text_max_length)["input_ids"]
    parts = datasets.Dataset.from_dict({"input_ids": ids, "id_input_ids": ids, "cloth_input_ids": ids,
                                        "cloth_valid": [False] * len(ids), "pid": list(table["pid"])})
    loader = DataLoader(QueryDataset(parts), batch_size=batch_size, collate_fn=QueryCollate(_pad_id(tokenizer)),
                        sampler=ShardSampler(len(parts), rank, world_size))
    return loader, list(table["file_path"])


def text_probes(train: Tensor, train_paths: Sequence[str], evaluated: Tensor, eval_paths: Sequence[str],
                factors: dict[str, dict]) -> dict[str, ProbeResult]:
    """``text_to_{factor}``: identity-factor probes on identity-text embeddings (one row per caption,
    labelled by its image's person), fit on the train split, scored on the evaluated split."""
    return {f"text_to_{target}": linear_probe(train, _labels(factors, train_paths, target),
                                              evaluated.cpu(), _labels(factors, eval_paths, target))
            for target in IDENTITY_PROBES}


def _labels(factors: dict[str, dict], paths: Sequence[str], target: str) -> list[str]:
    if target in CLOTHING_PROBES:
        section, name = CLOTHING_PROBES[target]
        return factor(factors, paths, section, name)
    from reid.oracle import identity_values

    return [identity_values(factors[p])[target] for p in paths]


def leakage_probes(
    train: dict[str, Tensor], train_paths: Sequence[str],
    evaluated: dict[str, Tensor], eval_paths: Sequence[str], eval_pids: Tensor,
    factors: dict[str, dict],
) -> dict[str, ProbeResult]:
    """``{source}_to_{target}`` linear probes. Attributes (upper colour, and with enough people the
    identity factors) are fit on the train split's images and scored on the evaluated split;
    ``person`` is cross-outfit within the evaluated split. Sources: ``identity`` (the 256-d identity
    embedding), ``id`` and ``cloth`` (the branch features); a source the model lacks is skipped."""
    outfits = outfit_ids(factors, eval_paths)
    people = len(set(eval_pids.tolist()))
    targets = list(CLOTHING_PROBES) + (list(IDENTITY_PROBES) if people >= MIN_PEOPLE_FOR_FACTORS else [])
    results = {}
    for source, names in SOURCES.items():
        key = next((k for k in names if k in train and k in evaluated), None)
        if key is None:
            continue
        feats, eval_feats = train[key], evaluated[key].cpu()
        for target in targets:
            if source == "cloth" and target in IDENTITY_PROBES:
                continue  # the clothing branch is probed for identity by the cross-outfit probe
            results[f"{source}_to_{target}"] = linear_probe(
                feats, _labels(factors, train_paths, target), eval_feats, _labels(factors, eval_paths, target))
        results[f"{source}_to_person"] = cross_outfit_probe(eval_feats, eval_pids.cpu(), outfits)
    return results


def perceived_log_probs(train: Tensor, train_paths: Sequence[str], gallery: Tensor,
                        factors: dict[str, dict]) -> dict[str, tuple[list[str], Tensor]]:
    """What features ``gallery`` (G, D) perceive of each identity fact the captions name: fact ->
    (classes, (G, C) log-probabilities) of a linear probe fit on the train images' features
    ``train`` (N, D), as the other probes are."""
    from reid.data.synth_text import IDENTITY_FACTS
    from reid.oracle import identity_values

    values = [identity_values(factors[p]) for p in train_paths]
    return {name: fit_log_proba(train, [v[name] for v in values], gallery.cpu()) for name in IDENTITY_FACTS}


def perceived_ranker(
    log_probs: dict[str, tuple[list[str], Tensor]], gallery_paths: Sequence[str], query_paths: Sequence[str],
    query_pids: Tensor, gallery_pids: Tensor, factors: dict[str, dict],
    protocols: dict[str, tuple[Optional[Tensor], Optional[Tensor]]],
) -> dict[str, dict[str, float]]:
    """``{protocol: metrics}`` of the perceived-fact ranker (:func:`reid.oracle.perceived_metrics`)
    on the gallery's :func:`perceived_log_probs`."""
    from reid.oracle import perceived_metrics

    return {protocol: perceived_metrics(factors, query_paths, log_probs, query_pids, gallery_pids.cpu(),
                                        query_groups=qg, gallery_groups=gg)
            for protocol, (qg, gg) in protocols.items()}


def one_fact_known(
    log_probs: dict[str, tuple[list[str], Tensor]], gallery_paths: Sequence[str], query_paths: Sequence[str],
    query_pids: Tensor, gallery_pids: Tensor, factors: dict[str, dict],
    groups: tuple[Optional[Tensor], Optional[Tensor]],
) -> dict[str, dict[str, float]]:
    """``{fact: metrics}``: the perceived-fact ranker under one protocol (``groups``: query and
    gallery groups) with that one fact's probe replaced by the ground truth
    (:func:`reid.oracle.known_log_probs`): what perceiving that fact perfectly would be worth, the
    others as perceived. The fact whose R1 rises most is the one whose perception costs most."""
    from reid.oracle import known_log_probs, perceived_metrics

    return {name: perceived_metrics(factors, query_paths, {**log_probs, name: known_log_probs(factors, gallery_paths, name)},
                                    query_pids, gallery_pids.cpu(), query_groups=groups[0], gallery_groups=groups[1])
            for name in log_probs}


# An identity factor's label distribution over a handful of people differs from the train split's,
# and a probe scored there measures that shift: identity factors are probed from 50 people on.
MIN_PEOPLE_FOR_FACTORS = 50


def mean_abs_cos(a: Tensor, b: Tensor) -> float:
    """Mean over rows of |cos(a_i, b_i)|; a row of zeros (a dead ReLU branch) has cos 0."""
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12).abs().mean())
