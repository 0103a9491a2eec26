"""Evaluate an exported reid model on a split, across every launched process.

    accelerate launch launch/evaluate.py --checkpoint runs/<run>/best [--split val|test]
        [--data-root DIR --dataset cuhk_pedes|icfg_pedes|rstpreid] [--json OUT]
        [key=value ...]

Without --data-root the model is evaluated on the data it was trained on (its config's data
section; the generated synthetic dataset when that was empty).

Prints one row per protocol x retrieval mode: R1, R5, R10, mAP and mINP in percent (IRRA's
definitions; every caption is a query, every image a gallery item), and R1 as a share of the
attribute oracle's where the data has ground truth.
  protocols: standard (every image of the split) and clothing-change (a caption's own outfit is
             removed from its gallery; synthetic data only, it needs outfit labels)
  modes:     standard (the whole caption), clothing-invariant (the caption's identity part against
             the image's identity embedding), attribute oracle (the ceiling)
On synthetic data it also prints linear-probe accuracies on frozen image features (clothing left in
the identity embedding, identity facts kept) beside chance. --json writes the same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reid.config import load_config
from reid.engine.accel import build_accelerator, settle_launch_environment
from reid.errors import ConfigError, report_user_errors
from reid.eval_report import format_report
from reid.evaluation import evaluate_split
from reid.export import load_exported


CHECKOUT = Path(__file__).resolve().parent.parent  # the repository this script runs from


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="an exported model: <run>/best or <run>/final")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="default: %(default)s")
    parser.add_argument("--data-root", default=None, help="dataset directory (default: the model's training data)")
    parser.add_argument("--dataset", default=None, help="annotation format of --data-root (cuhk_pedes, icfg_pedes, rstpreid)")
    parser.add_argument("--no-probes", action="store_true", help="skip the leakage probes (they encode the train split)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the model's config, e.g. eval.batch_size=256")
    return parser.parse_args(argv)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settle_launch_environment(CHECKOUT)
    model, tokenizer, cfg, meta = load_exported(args.checkpoint)
    overrides = list(args.overrides)
    overrides += [f"data.root={args.data_root}"] if args.data_root else []
    overrides += [f"data.dataset={args.dataset}", f"eval.split={args.split}"] if args.dataset else []
    if overrides:
        cfg = load_config(args.checkpoint / "config.yaml", overrides)
        positions = model.text_encoder.config.max_position_embeddings  # the model is built: check what it reads
        if cfg.data.text_max_length > positions:
            raise ConfigError(f"data.text_max_length: {cfg.data.text_max_length} tokens, but this model's text "
                              f"encoder reads at most {positions}; set data.text_max_length <= {positions}")
    accelerator = build_accelerator(cfg)
    # No prepare(): evaluation needs no gradient sync, and every process holds the whole model.
    model = model.to(accelerator.device)
    report = evaluate_split(model, cfg, tokenizer, meta, accelerator, split=args.split, probes=not args.no_probes)
    if accelerator.is_main_process:
        report["checkpoint"] = str(args.checkpoint.resolve())
        print(format_report(report), flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1))
            print(f"wrote {args.json}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
