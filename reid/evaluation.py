"""Text-to-image retrieval evaluation across processes: encode once, rank with IRRA's metrics.

Gallery images and query captions are sharded contiguously over the processes (``ShardSampler``),
encoded through the model's ``forward`` (so ZeRO-3 gathers its partitioned weights), gathered in
rank order and truncated to the split's size, so every sample is counted exactly once.

* :func:`evaluate` — what the trainer runs on val: the standard protocol (+ re-ranked with
  ``eval.rerank_topk``).
* :func:`evaluate_split` — what ``launch/evaluate.py`` runs on an exported model: the standard and
  clothing-change protocols for full and identity-only queries, with and without fusion
  re-ranking, the leakage probes and timings (:mod:`reid.disentangle_eval`, :mod:`reid.rerank`).
* :func:`retrieval_metrics` — R@k / mAP / mINP under a protocol (gallery items removed per query
  group, re-ranked candidates first), from embeddings, without the full (Q, G) matrix.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from reid.data import keys
from reid.metrics import rank_from_embeddings
from reid.rerank import Reranked, rerank, reranked_similarity

KS = (1, 5, 10)
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def encode_outputs(
    model: torch.nn.Module, loader: Any, accelerator: Any, kind: str, total: int
) -> tuple[dict[str, Tensor], Tensor]:
    """Every tensor ``forward`` returns for the samples of ``loader`` (``kind`` = "image": the image
    dispatch, "text": the text one), and their pids; length ``total`` on every rank, dataset order."""
    outputs: dict[str, list[Tensor]] = {}
    pids = []
    for batch in loader:
        batch = _to_device(batch, accelerator.device)
        inputs = {keys.IMAGES: batch[keys.IMAGES]} if kind == "image" else {
            keys.INPUT_IDS: batch[keys.INPUT_IDS],
            keys.ATTENTION_MASK: batch[keys.ATTENTION_MASK],
        }
        with accelerator.autocast():
            out = model(inputs)
        for name, value in out.items():
            outputs.setdefault(name, []).append(value.float())
        pids.append(batch[keys.PIDS])
    field = "image_embeds" if kind == "image" else "text_embeds"
    local = {name: torch.cat(v) for name, v in outputs.items()} or {field: torch.zeros(0, 1, device=accelerator.device)}
    local_pids = torch.cat(pids) if pids else torch.zeros(0, dtype=torch.long, device=accelerator.device)
    if accelerator.num_processes > 1:
        local = {name: accelerator.gather(v.contiguous()) for name, v in sorted(local.items())}
        local_pids = accelerator.gather(local_pids.contiguous())
    return {name: v[:total] for name, v in local.items()}, local_pids[:total]


def encode(model: torch.nn.Module, loader: Any, accelerator: Any, kind: str, total: int) -> tuple[Tensor, Tensor]:
    """Embed every sample of ``loader`` (``kind`` = "image" or "text"); returns (embeds, pids) of
    length ``total`` on every rank, in dataset order."""
    outputs, pids = encode_outputs(model, loader, accelerator, kind, total)
    return outputs["image_embeds" if kind == "image" else "text_embeds"], pids


# --------------------------------------------------------------------------------------------------
# Metrics under a protocol
# --------------------------------------------------------------------------------------------------


def _protocol_stats(sim: Tensor, q_pids: Tensor, g_pids: Tensor, removed: Optional[Tensor], ks: tuple[int, ...]):
    """Per query of a (c, G) chunk: hit within top k (c, K), AP (c,), INP (c,), has a hit (c,).

    The definitions of :mod:`reid.metrics` (IRRA's), with ``removed`` (c, G) items taken out of
    each query's gallery: ranked last and never a hit, which is the same as deleting them.
    """
    if removed is not None:
        sim = sim.masked_fill(removed, float("-inf"))
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices  # (c, G)
    matches = g_pids[order] == q_pids[:, None]  # (c, G) hit at each rank
    if removed is not None:
        matches &= ~removed.gather(1, order)
    ranks = torch.arange(1, sim.shape[1] + 1, device=sim.device, dtype=torch.float64)  # (G,)
    num_pos = matches.sum(1)  # (c,)
    hits = matches.cumsum(1, dtype=torch.float64)  # (c, G) hits within the top r
    k_cols = torch.tensor([min(k, sim.shape[1]) - 1 for k in ks], device=sim.device)
    last = torch.where(matches, ranks, 0.0).amax(1)  # (c,) rank of the last hit
    ap = (hits / ranks * matches).sum(1) / num_pos.clamp(min=1)
    return hits[:, k_cols] > 0, ap, num_pos / last.clamp(min=1), num_pos > 0


@torch.no_grad()
def retrieval_metrics(
    query_embeds: Tensor,
    gallery_embeds: Tensor,
    query_pids: Tensor,
    gallery_pids: Tensor,
    *,
    query_groups: Optional[Tensor] = None,
    gallery_groups: Optional[Tensor] = None,
    reranked: Optional[Reranked] = None,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP (percent) and ``num_skipped`` (queries without a hit), as
    :func:`reid.metrics.rank`, chunk by chunk over queries.

    With ``query_groups`` (Q,) / ``gallery_groups`` (G,), the gallery items of a query's own group
    are removed from its gallery (clothing-change: the group is the outfit). With ``reranked``, each
    query's candidates come first, in fusion-score order. Without either this is exactly
    :func:`reid.metrics.rank_from_embeddings`.
    """
    if query_groups is None and reranked is None:
        return rank_from_embeddings(query_embeds, gallery_embeds, query_pids, gallery_pids, KS, chunk_size)
    device = gallery_embeds.device
    query_embeds, query_pids, gallery_pids = query_embeds.to(device), query_pids.to(device), gallery_pids.to(device)
    hit_at_k = torch.zeros(len(KS), dtype=torch.int64, device=device)
    ap, inp = (torch.zeros(len(query_embeds), dtype=torch.float64, device=device) for _ in range(2))
    num_valid = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(query_embeds), chunk_size):
        rows = slice(start, start + chunk_size)
        sim = query_embeds[rows] @ gallery_embeds.T  # (c, G)
        if reranked is not None:
            sim = reranked_similarity(sim, reranked.indices[rows].to(device), reranked.scores[rows].to(device))
        removed = None
        if query_groups is not None:
            removed = query_groups[rows].to(device)[:, None] == gallery_groups.to(device)[None]  # (c, G)
        at_k, ap[rows], inp[rows], valid = _protocol_stats(sim, query_pids[rows], gallery_pids, removed, KS)
        hit_at_k += at_k.sum(0)  # queries without a hit add 0 everywhere
        num_valid += valid.sum()
    count = int(num_valid)
    if count == 0:
        raise ValueError(f"none of the {len(query_embeds)} queries has a hit left in its gallery under this protocol")
    scale = 100.0 / count  # as reid.metrics computes it, so equal counts give equal floats
    result = {f"R{k}": v * scale for k, v in zip(KS, hit_at_k.tolist())}
    result.update(mAP=float(ap.sum()) * scale, mINP=float(inp.sum()) * scale)
    result["num_skipped"] = len(query_embeds) - count
    return result


# --------------------------------------------------------------------------------------------------
# The trainer's evaluation
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


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, eval_data: Any, accelerator: Any, chunk_size: int = 1024, rerank_topk: int = 0
) -> dict[str, float]:
    """R1/R5/R10/mAP/mINP (percent) of text→image retrieval on ``eval_data`` (see build_eval_data);
    with ``rerank_topk`` > 0 also ``rerank_R1`` .. ``rerank_mINP`` (fusion head re-scores the top k)."""
    with _eval_mode(model):
        gallery, gallery_pids = encode(model, eval_data.gallery_loader, accelerator, "image", len(eval_data.gallery))
        queries, query_pids = encode(model, eval_data.query_loader, accelerator, "text", len(eval_data.queries))
        reranked = rerank(model, queries, gallery, rerank_topk, accelerator, chunk_size=chunk_size) if rerank_topk else None
    # Similarity is computed chunk by chunk over queries: never the full (Q, G) matrix (ICFG-PEDES).
    metrics = rank_from_embeddings(queries, gallery, query_pids, gallery_pids, chunk_size=chunk_size)
    if reranked is not None:
        again = retrieval_metrics(queries, gallery, query_pids, gallery_pids, reranked=reranked, chunk_size=chunk_size)
        metrics.update({f"rerank_{name}": again[name] for name in METRICS})
    return metrics


# --------------------------------------------------------------------------------------------------
# The full evaluation of an exported model (launch/evaluate.py)
# --------------------------------------------------------------------------------------------------

QUERY_TYPES = {"full": "full caption", "id": "identity part"}
PROTOCOLS = {"standard": "standard", "clothing_change": "clothing-change"}


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module, cfg: Any, tokenizer: Any, meta: dict, accelerator: Any, *,
    split: str, rerank_topk: int = 0, probes: bool = True,
) -> dict[str, Any]:
    """Everything measurable on ``split`` (collective): see the module docstring. Returns a
    JSON-able dict; the same on every process."""
    from reid.data import build_eval_data, prepare_root

    with accelerator.local_main_process_first():
        root = prepare_root(cfg.data)
        shared = dict(batch_size=cfg.eval.batch_size, rank=accelerator.process_index,
                      world_size=accelerator.num_processes, pixel_mean=meta.get("pixel_mean"),
                      pixel_std=meta.get("pixel_std"))
        data = {q: build_eval_data(cfg.data, tokenizer, split, query=q, **shared) for q in QUERY_TYPES}
    gallery_table, query_table = data["full"].gallery, data["full"].queries
    report: dict[str, Any] = {
        "dataset": cfg.data.dataset, "root": str(root), "split": split, "num_gallery": len(gallery_table),
        "num_queries": len(query_table), "num_processes": accelerator.num_processes,
        "retrieval": {}, "seconds": {"encode": 0.0, "rank": 0.0}, "notes": [],
    }
    with _eval_mode(model):
        start = time.perf_counter()
        gallery, gallery_pids = encode_outputs(model, data["full"].gallery_loader, accelerator, "image", len(gallery_table))
        queries = {q: encode(model, d.query_loader, accelerator, "text", len(d.queries)) for q, d in data.items()}
        report["seconds"]["encode"] = time.perf_counter() - start
        paths = {"gallery": list(gallery_table["file_path"]), "queries": list(query_table["file_path"])}
        factors, protocols = _protocols(root, paths, report["notes"])
        for protocol, (q_groups, g_groups) in protocols.items():
            for q, (q_embeds, q_pids) in queries.items():
                args = (q_embeds, gallery["image_embeds"], q_pids, gallery_pids)
                options = dict(query_groups=q_groups, gallery_groups=g_groups, chunk_size=cfg.eval.chunk_size)
                report["retrieval"].setdefault(protocol, {})[q], seconds = _timed(retrieval_metrics, *args, **options)
                report["seconds"]["rank"] += seconds
                if rerank_topk:
                    _rerank_row(report, model, accelerator, rerank_topk, (protocol, q), args, options)
        if "cloth_embeds" not in gallery:
            report["notes"].append("probes and mean |cos(id, cloth)|: the model has no cloth branch "
                                   "(cloth, cloth_match, cloth_adv and decouple weights are all 0)")
        else:
            report["disentangle"] = {"mean_abs_cos_id_cloth": _mean_abs_cos(gallery)}
            if probes and factors is not None:
                start = time.perf_counter()
                report["disentangle"]["probes"] = _probes(model, cfg, tokenizer, meta, accelerator, root, factors,
                                                         gallery, paths["gallery"], gallery_pids)
                report["seconds"]["probes"] = time.perf_counter() - start
    return report


def _protocols(root: Any, paths: dict[str, list[str]], notes: list[str]) -> tuple[Optional[dict], dict]:
    """(factors or None, {protocol: (query groups, gallery groups)}); says in ``notes`` why the
    clothing-change protocol is missing when it is."""
    from reid.disentangle_eval import load_factors, missing_factors, outfit_ids

    protocols = {"standard": (None, None)}
    factors = load_factors(root)
    if factors is None:
        notes.append(f"clothing-change protocol and probes: not available (no outfit labels: "
                     f"{root}/synth_factors.json exists only for the synthetic dataset)")
        return None, protocols
    missing = missing_factors(factors, paths["gallery"] + paths["queries"])
    if missing:
        notes.append(f"clothing-change protocol and probes: not available ({len(missing)} images "
                     f"have no factors in synth_factors.json, e.g. {missing[0]})")
        return None, protocols
    protocols["clothing_change"] = (outfit_ids(factors, paths["queries"]), outfit_ids(factors, paths["gallery"]))
    return factors, protocols


def _rerank_row(report: dict, model: torch.nn.Module, accelerator: Any, k: int, row: tuple[str, str],
                args: tuple[Tensor, ...], options: dict) -> None:
    """Re-rank one (protocol, query type) row: ``args`` / ``options`` as for retrieval_metrics."""
    start = time.perf_counter()
    q_embeds, g_embeds = args[:2]
    reranked = rerank(model, q_embeds, g_embeds, k, accelerator, **options)
    result = retrieval_metrics(*args, reranked=reranked, **options)
    section = report.setdefault("reranked", {"topk": k, "seconds": 0.0, "pairs": 0})
    section.setdefault(row[0], {})[row[1]] = result
    section["seconds"] += time.perf_counter() - start
    section["pairs"] += reranked.indices.numel()


def _mean_abs_cos(gallery: dict[str, Tensor]) -> float:
    from reid.disentangle_eval import mean_abs_cos

    return mean_abs_cos(gallery["id_embeds"], gallery["cloth_embeds"])


def _probes(model: torch.nn.Module, cfg: Any, tokenizer: Any, meta: dict, accelerator: Any, root: Any,
            factors: dict, gallery: dict[str, Tensor], gallery_paths: list[str], gallery_pids: Tensor) -> dict:
    """Encode the train split's images, fit the four probes (see reid.disentangle_eval)."""
    from reid.disentangle_eval import leakage_probes, train_image_loader

    loader, train_paths = train_image_loader(
        cfg.data, tokenizer, root, batch_size=cfg.eval.batch_size, rank=accelerator.process_index,
        world_size=accelerator.num_processes, pixel_mean=meta.get("pixel_mean"), pixel_std=meta.get("pixel_std"),
    )
    train, _ = encode_outputs(model, loader, accelerator, "image", len(train_paths))
    results = leakage_probes(train, train_paths, gallery, gallery_paths, gallery_pids, factors)
    return {name: r.to_dict() for name, r in results.items()}


def format_report(report: dict[str, Any]) -> str:
    """The table ``launch/evaluate.py`` prints."""
    from reid.disentangle_eval import LEAKAGE

    lines = [f"{report['dataset']} {report['split']!r} split ({report['root']}): {report['num_gallery']} images, "
             f"{report['num_queries']} queries, {report['num_processes']} process(es)",
             f"{'protocol':<28}{'query':<15}" + "".join(f"{m:>8}" for m in METRICS)]
    rows = [(PROTOCOLS[p], q, m) for p, by_q in report["retrieval"].items() for q, m in by_q.items()]
    reranked = report.get("reranked")
    if reranked:
        rows += [(f"{PROTOCOLS[p]} +rerank@{reranked['topk']}", q, m)
                 for p, by_q in reranked.items() if p in PROTOCOLS for q, m in by_q.items()]
    for protocol, q, m in rows:
        lines.append(f"{protocol:<28}{QUERY_TYPES[q]:<15}" + "".join(f"{m[name]:8.2f}" for name in METRICS))
    dis = report.get("disentangle")
    if dis:
        if "probes" in dis:
            lines.append(f"{'linear probe (frozen features)':<41}{'accuracy':>10}{'chance':>8}")
            for name, p in dis["probes"].items():
                source, target = name.split("_to_")
                kind = "leakage" if (source, target) in LEAKAGE else "reference"
                label = f"{source} -> {target.replace('_', ' ')} ({kind})"
                lines.append(f"{label:<41}{p['accuracy']:10.2f}{p['chance']:8.2f}")
        lines.append(f"mean |cos(id_embeds, cloth_embeds)|: {dis['mean_abs_cos_id_cloth']:.4f}")
    sec = report["seconds"]
    timing = f"time: encode {sec['encode']:.2f} s, rank {sec['rank']:.3f} s"
    if reranked:
        per_query = 1000 * reranked["seconds"] / max(1, reranked["pairs"] // max(1, reranked["topk"]))
        timing += f", re-rank@{reranked['topk']} {reranked['seconds']:.3f} s ({per_query:.2f} ms/query)"
    if "probes" in sec:
        timing += f", probes {sec['probes']:.2f} s"
    lines.append(timing)
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
