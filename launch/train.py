"""Train reid: ``accelerate launch launch/train.py [--config FILE] [--resume latest|DIR] [key=value ...]``.

With no arguments it runs the embedded default (configs/synthetic.yaml): it generates the synthetic
CUHK-PEDES-format dataset on first use, trains the tiny model, evaluates on val and prints where the
run's files are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reid.config import load_config
from reid.engine.accel import settle_launch_environment
from reid.engine.report import print_summary
from reid.engine.trainer import fit
from reid.errors import report_user_errors

CHECKOUT = Path(__file__).resolve().parent.parent  # the repository this script runs from
DEFAULT_CONFIG = CHECKOUT / "configs" / "synthetic.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="experiment YAML (default: %(default)s)")
    parser.add_argument("--resume", default=None, help="'latest' (newest checkpoint of the run) or a checkpoint dir")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=3e-5")
    return parser.parse_args(argv)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settle_launch_environment(CHECKOUT)
    cfg = load_config(args.config, args.overrides)
    result = fit(cfg, config_name=args.config.stem, resume=args.resume)
    print_summary(result, cfg.eval.select)
    return 0


if __name__ == "__main__":
    sys.exit(main())
