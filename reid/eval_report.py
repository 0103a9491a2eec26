"""The evaluation report as ``launch/evaluate.py`` prints it: every (protocol, mode) row with R1 as
a share of the attribute oracle's, the probes, the timings and the notes (the numbers come from
:func:`reid.evaluation.evaluate_split`)."""

from __future__ import annotations

from typing import Any

from reid.evaluation import METRICS, ORACLE, PROTOCOLS
from reid.retrieval import MODES


def _mode_label(mode: str) -> str:
    if mode == ORACLE:
        return "attribute oracle"
    return MODES[mode]


# Probe sources as the report names them: the 256-d identity embedding the clothing-invariant mode
# ranks with, and the raw branch features (H) below the shared heads.
_SOURCE_LABELS = {"identity": "identity embedding", "id": "id_embeds", "cloth": "cloth_embeds",
                  "text": "identity text embedding"}


def format_report(report: dict[str, Any]) -> str:
    """The table ``launch/evaluate.py`` prints: every (protocol, mode) row, R1 as a share of the
    oracle's where there is one, the probes and the timings."""
    from reid.disentangle_eval import LEAKAGE

    lines = [f"{report['dataset']} {report['split']!r} split ({report['root']}): {report['num_gallery']} images, "
             f"{report['num_queries']} queries, {report['num_processes']} process(es); standard mode: "
             f"{report['standard_form']} score"
             + (f"; identity embedding through the clothing eraser ({report['clothing_eraser']} directions)"
                if report.get("clothing_eraser") else ""),
             f"{'protocol':<17}{'mode':<30}" + "".join(f"{m:>8}" for m in METRICS) + f"{'R1/oracle':>11}"]
    for protocol, by_mode in report["retrieval"].items():
        oracle = by_mode.get(ORACLE, {}).get("R1")
        for mode, m in by_mode.items():
            share = f"{100 * m['R1'] / oracle:10.1f}%" if oracle and mode != ORACLE else ""
            lines.append(f"{PROTOCOLS[protocol]:<17}{_mode_label(mode):<30}"
                         + "".join(f"{m[name]:8.2f}" for name in METRICS) + share)
    dis = report.get("disentangle")
    if dis:
        if "probes" in dis:
            lines.append(f"{'linear probe (frozen features)':<47}{'accuracy':>10}{'chance':>8}")
            for name, p in dis["probes"].items():
                source, target = name.split("_to_")
                kind = "leakage" if (source, target) in LEAKAGE else "reference"
                label = f"{_SOURCE_LABELS.get(source, source)} -> {target.replace('_', ' ')} ({kind})"
                lines.append(f"{label:<47}{p['accuracy']:10.2f}{p['chance']:8.2f}")
        for protocol, m in dis.get("perceived", {}).items():
            lines.append(f"perceived-fact ranker (probes on the identity embedding), {PROTOCOLS[protocol]}: "
                         f"R1 {m['R1']:.2f}, mAP {m['mAP']:.2f}")
        known = dis.get("perceived_one_known")
        if known:
            facts = ", ".join(f"{name.replace('_', ' ')} {m['R1']:.2f}" for name, m in known["facts"].items())
            lines.append(f"the same ranker with one fact's ground truth in place of its probe, "
                         f"{PROTOCOLS[known['protocol']]} R1: {facts}")
        if "mean_abs_cos_id_cloth" in dis:
            lines.append(f"mean |cos(id_embeds, cloth_embeds)|: {dis['mean_abs_cos_id_cloth']:.4f}")
    sec = report["seconds"]
    timing = f"time: encode {sec['encode']:.2f} s, rank {sec['rank']:.3f} s"
    if "probes" in sec:
        timing += f", probes {sec['probes']:.2f} s"
    lines.append(timing)
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)
