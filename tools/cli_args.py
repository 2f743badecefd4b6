"""Command-line arguments that several tools share, spelled and explained once.

argparse only (no torch): building a parser stays instant, so ``--help`` is.
"""

from __future__ import annotations

from typing import Any

DEBUG_HELP = "show the traceback of user errors too (or TOOLS_DEBUG=1)"


def add_debug(parser: Any) -> None:
    """``--debug``: tracebacks for user errors (see :func:`backbones_tools.errors.run_cli`)."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)


def add_overrides(parser: Any, example: str = "") -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value (repeatable){', e.g. --set ' + example if example else ''}")


def add_checkpoint_source(parser: Any, *, required: bool) -> None:
    """``--checkpoint`` and the config it is rebuilt with (``--config``, ``--set``)."""
    parser.add_argument("--checkpoint", required=required, help="training checkpoint (RUN/best.pth or last.pth)")
    parser.add_argument("--config", help="config YAML (default: the config saved in the checkpoint)")
    add_overrides(parser, "model.options.box_score_thresh=0.3")


def add_split_source(parser: Any) -> None:
    """``--split`` and ``--data-root``: the dataset split a checkpoint is evaluated on."""
    parser.add_argument("--split", help="split to evaluate (default: the config's data.val_split)")
    parser.add_argument("--data-root", help="COCO-layout dataset folder (default: the config's data.root)")
