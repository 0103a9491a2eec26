"""Text-to-image retrieval evaluation: two retrieval modes under two protocols, beside the ceiling.

* **modes** (:mod:`reid.retrieval`) — ``standard``: the whole description against the image;
  ``clothing_invariant``: the identity part of the description against the image's identity
  embedding.
* **protocols** — ``standard``: every caption against every gallery image of the split (IRRA's);
  ``clothing_change``: a caption's own outfit is removed from its gallery, so only the person's
  other outfits count as hits (needs outfit labels: the synthetic dataset's ``synth_factors.json``).
* **the attribute oracle** (:mod:`reid.oracle`) — a ranker that knows the ground-truth identity
  factors the caption names; reported under each protocol beside the learned modes, so every
  learned figure reads as a fraction of what is achievable.

Entry points: :func:`evaluate` — what the trainer runs on val (a flat dict keyed
``<protocol>/<mode>/<metric>``); :func:`evaluate_split` — what ``launch/evaluate.py`` runs on an
exported model (+ leakage probes, timings); :func:`retrieval_metrics` — R@k / mAP /
mINP under a protocol from embeddings, without the full (Q, G) matrix. Encoding across processes
is :mod:`reid.encoding`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from reid.encoding import encode_gallery, encode_queries
from reid.metrics import rank_from_embeddings
from reid.retrieval import MODES, identity_rows, mode_embeddings, query_fields, standard_form

KS = (1, 5, 10)
METRICS = ("R1", "R5", "R10", "mAP", "mINP")
PROTOCOLS = {"standard": "standard", "clothing_change": "clothing-change"}
ORACLE = "oracle"


# --------------------------------------------------------------------------------------------------
# Metrics under a protocol
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def retrieval_metrics(
    query_embeds: Tensor,
    gallery_embeds: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    *,
    query_groups: Optional[Tensor] = None,
    gallery_groups: Optional[Tensor] = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP (percent) and ``num_skipped`` (queries without a hit) under a protocol:
    :func:`reid.metrics.rank_from_embeddings` at :data:`KS`, whose ``query_groups`` (Q,) /
    ``gallery_groups`` (G,) remove the gallery items of a query's own group (clothing-change: the
    group is the outfit)."""
    return rank_from_embeddings(query_embeds, gallery_embeds, query_pids, gallery_pids, KS, chunk_size,
                                query_groups=query_groups, gallery_groups=gallery_groups)


# --------------------------------------------------------------------------------------------------
# What the synthetic dataset knows: outfit groups and the attribute oracle
# --------------------------------------------------------------------------------------------------


@dataclass
class SplitTruth:
    """Ground truth of an evaluation split (the synthetic dataset only)."""

    factors: dict[str, dict]  # synth_factors.json: file_path -> factors
    query_groups: Tensor  # (Q,) outfit of each query's image
    gallery_groups: Tensor  # (G,) outfit of each gallery image
    oracle: Optional[dict[str, dict[str, float]]]  # protocol -> metrics of the attribute oracle


def split_truth(root: Any, gallery: Any, queries: Any, notes: list[str]) -> Optional[SplitTruth]:
    """The split's outfits and oracle figures from ``<root>/synth_factors.json``; None (and a line
    in ``notes`` saying why) when the dataset has no such file or it does not cover the split.
    ``gallery`` / ``queries`` are the split's tables (``file_path``, ``pid`` columns)."""
    from reid.disentangle_eval import load_factors, missing_factors, outfit_ids
    from reid.errors import DataError
    from reid.oracle import oracle_metrics

    factors = load_factors(Path(root))
    if factors is None:
        notes.append(f"clothing-change protocol, oracle and probes: not available (no outfit labels: "
                     f"{root}/synth_factors.json exists only for the synthetic dataset)")
        return None
    g_paths, q_paths = list(gallery["file_path"]), list(queries["file_path"])
    missing = missing_factors(factors, g_paths + q_paths)
    if missing:
        notes.append(f"clothing-change protocol, oracle and probes: not available ({len(missing)} images "
                     f"have no factors in synth_factors.json, e.g. {missing[0]})")
        return None
    truth = SplitTruth(factors, outfit_ids(factors, q_paths), outfit_ids(factors, g_paths), None)
    q_pids, g_pids = torch.tensor(list(queries["pid"])), torch.tensor(list(gallery["pid"]))
    try:
        truth.oracle = {protocol: oracle_metrics(factors, q_paths, g_paths, q_pids, g_pids, query_groups=qg,
                                                 gallery_groups=gg)
                        for protocol, (qg, gg) in protocol_groups(truth).items()}
    except DataError as exc:
        notes.append(f"attribute oracle: not available ({exc})")
    return truth


def protocol_groups(truth: Optional[SplitTruth]) -> dict[str, tuple[Optional[Tensor], Optional[Tensor]]]:
    """``{protocol: (query groups, gallery groups)}``: clothing-change only where outfits are known."""
    out: dict[str, tuple[Optional[Tensor], Optional[Tensor]]] = {"standard": (None, None)}
    if truth is not None:
        out["clothing_change"] = (truth.query_groups, truth.gallery_groups)
    return out


# --------------------------------------------------------------------------------------------------
# Both modes under both protocols
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """model.eval() inside, the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class Retrieval:
    """Every (protocol, mode) row of one evaluation, and what was encoded."""

    rows: dict[tuple[str, str], dict[str, float]]  # (protocol, mode or oracle) -> metrics
    gallery: dict[str, Tensor]  # the image dispatch's outputs
    gallery_pids: Tensor
    queries: dict[str, Tensor]  # field (full, id, cloth) -> text embeddings of the queries
    form: str  # the standard mode's form: composed | full
    seconds: dict[str, float]


@torch.no_grad()
def run_retrieval(
    model: torch.nn.Module, eval_data: Any, accelerator: Any, *, truth: Optional[SplitTruth] = None,
    standard: str = "composed", chunk_size: int = 1024,
) -> Retrieval:
    """Encode the split once (collective), then score both modes under every available protocol."""
    seconds = {"encode": 0.0, "rank": 0.0}
    with _eval_mode(model):
        start = time.perf_counter()
        gallery, g_pids = encode_gallery(model, eval_data.gallery_loader, accelerator, len(eval_data.gallery))
        form = standard_form(standard, gallery)
        fields = sorted({f for mode in MODES for f in query_fields(mode, form)})
        queries, q_pids = encode_queries(model, eval_data.query_loader, accelerator, len(eval_data.queries), fields)
        seconds["encode"] = time.perf_counter() - start
        result = Retrieval({}, gallery, g_pids, queries, form, seconds)
        for protocol, (q_groups, g_groups) in protocol_groups(truth).items():
            options = dict(query_groups=q_groups, gallery_groups=g_groups, chunk_size=chunk_size)
            for mode in MODES:
                q, g = mode_embeddings(mode, queries, gallery, form)
                start = time.perf_counter()
                result.rows[protocol, mode] = retrieval_metrics(q, g, q_pids, g_pids, **options)
                seconds["rank"] += time.perf_counter() - start
            if truth is not None and truth.oracle is not None:
                result.rows[protocol, ORACLE] = truth.oracle[protocol]
    return result


def flat_metrics(rows: dict[tuple[str, str], dict[str, float]]) -> dict[str, float]:
    """``{"<protocol>/<mode>/<metric>": value}`` (e.g. ``clothing_change/clothing_invariant/R1``)."""
    return {f"{protocol}/{mode}/{name}": float(m[name]) for (protocol, mode), m in rows.items() for name in METRICS}


def evaluate(
    model: torch.nn.Module, eval_data: Any, accelerator: Any, *, truth: Optional[SplitTruth] = None,
    standard: str = "composed", chunk_size: int = 1024,
) -> dict[str, float]:
    """What the trainer runs on val: :func:`flat_metrics` of :func:`run_retrieval` (collective)."""
    result = run_retrieval(model, eval_data, accelerator, truth=truth, standard=standard,
                           chunk_size=chunk_size)
    return flat_metrics(result.rows)


def selection_keys() -> list[str]:
    """The values ``eval.select`` may name."""
    return [f"{p}/{m}/{n}" for p in PROTOCOLS for m in MODES for n in METRICS]


# --------------------------------------------------------------------------------------------------
# The full evaluation of an exported model (launch/evaluate.py)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module, cfg: Any, tokenizer: Any, meta: dict, accelerator: Any, *,
    split: str, probes: bool = True,
) -> dict[str, Any]:
    """Everything measurable on ``split`` (collective): both modes under both protocols, the
    oracle, the leakage probes, timings. Returns a JSON-able dict, the same on every
    process."""
    from reid.data import build_eval_data, prepare_root

    notes: list[str] = []
    with accelerator.local_main_process_first():
        root = prepare_root(cfg.data)
        data = build_eval_data(cfg.data, tokenizer, split, batch_size=cfg.eval.batch_size,
                               rank=accelerator.process_index, world_size=accelerator.num_processes,
                               pixel_mean=meta.get("pixel_mean"), pixel_std=meta.get("pixel_std"))
    truth = split_truth(root, data.gallery, data.queries, notes)
    result = run_retrieval(model, data, accelerator, truth=truth, standard=cfg.eval.standard,
                           chunk_size=cfg.eval.chunk_size)
    report: dict[str, Any] = {
        "dataset": cfg.data.dataset, "root": str(root), "split": split, "num_gallery": len(data.gallery),
        "num_queries": len(data.queries), "num_processes": accelerator.num_processes,
        "standard_form": result.form, "retrieval": {}, "seconds": dict(result.seconds), "notes": notes,
        # directions the clothing eraser takes out of the identity embedding (reid.erasure); 0: none
        "clothing_eraser": cfg.model.clothing_eraser.rank if "invariant_image_embeds" in result.gallery else 0,
    }
    for (protocol, mode), metrics in result.rows.items():
        report["retrieval"].setdefault(protocol, {})[mode] = dict(metrics)
    gallery = result.gallery
    report["disentangle"] = {}
    if "cloth_embeds" not in gallery:
        notes.append("cloth-branch probes and mean |cos(id, cloth)|: the model has no cloth branch "
                     "(cloth, cloth_match, cloth_adv and decouple weights are all 0)")
    else:
        report["disentangle"]["mean_abs_cos_id_cloth"] = _mean_abs_cos(gallery)
    if probes and truth is not None:
        start = time.perf_counter()
        g_paths, q_paths = list(data.gallery["file_path"]), list(data.queries["file_path"])
        train, train_paths, probed = _probes(model, cfg, tokenizer, meta, accelerator, root, truth.factors,
                                             gallery, g_paths, result.gallery_pids)
        report["disentangle"]["probes"] = probed
        from reid.disentangle_eval import MIN_PEOPLE_FOR_FACTORS, one_fact_known, perceived_log_probs, perceived_ranker

        if len(set(result.gallery_pids.tolist())) >= MIN_PEOPLE_FOR_FACTORS:  # as the image-side factor probes
            report["disentangle"]["probes"].update(_text_probes(
                model, cfg, tokenizer, accelerator, root, truth.factors, result.queries["id"], q_paths))
            # the attribute ranker on what the identity embedding perceives (reid.oracle)
            log_probs = perceived_log_probs(identity_rows(train), train_paths, identity_rows(gallery), truth.factors)
            q_pids, groups = torch.tensor(list(data.queries["pid"])), protocol_groups(truth)
            report["disentangle"]["perceived"] = perceived_ranker(
                log_probs, g_paths, q_paths, q_pids, result.gallery_pids, truth.factors, groups)
            protocol = "clothing_change" if "clothing_change" in groups else "standard"
            report["disentangle"]["perceived_one_known"] = {"protocol": protocol, "facts": one_fact_known(
                log_probs, g_paths, q_paths, q_pids, result.gallery_pids, truth.factors, groups[protocol])}
        report["seconds"]["probes"] = time.perf_counter() - start
    return report


def _text_probes(model: torch.nn.Module, cfg: Any, tokenizer: Any, accelerator: Any, root: Any, factors: dict,
                 evaluated: Tensor, eval_paths: list[str]) -> dict:
    """Encode the train split's identity texts, fit the identity-text probes (reid.disentangle_eval)."""
    from reid.disentangle_eval import text_probes, train_query_loader

    loader, train_paths = train_query_loader(cfg.data, tokenizer, root, batch_size=cfg.eval.batch_size,
                                             rank=accelerator.process_index, world_size=accelerator.num_processes)
    with _eval_mode(model):
        train, _ = encode_queries(model, loader, accelerator, len(train_paths), ("id",))
    return {name: r.to_dict() for name, r in text_probes(train["id"], train_paths, evaluated, eval_paths, factors).items()}


def _mean_abs_cos(gallery: dict[str, Tensor]) -> float:
    from reid.disentangle_eval import mean_abs_cos

    return mean_abs_cos(gallery["id_embeds"], gallery["cloth_embeds"])


def _probes(model: torch.nn.Module, cfg: Any, tokenizer: Any, meta: dict, accelerator: Any, root: Any,
            factors: dict, gallery: dict[str, Tensor], gallery_paths: list[str],
            gallery_pids: Tensor) -> tuple[dict[str, Tensor], list[str], dict]:
    """Encode the train split's images, fit the probes (see reid.disentangle_eval); returns the train
    images' outputs, their paths and the probe results."""
    from reid.disentangle_eval import leakage_probes, train_image_loader

    loader, train_paths = train_image_loader(
        cfg.data, tokenizer, root, batch_size=cfg.eval.batch_size, rank=accelerator.process_index,
        world_size=accelerator.num_processes, pixel_mean=meta.get("pixel_mean"), pixel_std=meta.get("pixel_std"),
    )
    with _eval_mode(model):
        train, _ = encode_gallery(model, loader, accelerator, len(train_paths))
    results = leakage_probes(train, train_paths, gallery, gallery_paths, gallery_pids, factors)
    return train, train_paths, {name: r.to_dict() for name, r in results.items()}
