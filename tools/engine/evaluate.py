"""Evaluate a trained checkpoint on a dataset split (the ``--checkpoint`` mode of eval_coco.py)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from backbones_tools import distributed as D
from backbones_tools.cli_args import add_checkpoint_source, add_debug, add_split_source
from backbones_tools.config.schema import TrainConfig
from backbones_tools.engine.checkpoint import CheckpointError, load_checkpoint
from backbones_tools.engine.data import build_eval_loader, prepare_data_root
from backbones_tools.engine.preflight import run_preflight_once
from backbones_tools.engine.run_checkpoint import checkpoint_config, load_run_weights, saved_category_map
from backbones_tools.engine.tasks import make_task
from heads import optimize_for_inference

logger = logging.getLogger(__name__)


@dataclass
class EvalOutcome:
    """Metrics (COCO stats as ``bbox/AP`` ..., or ``seg/mIoU``) and the printable table."""

    metrics: dict[str, float]
    table: str


def evaluate_checkpoint(
    checkpoint: str | os.PathLike[str],
    cfg: TrainConfig | None = None,
    *,
    split: str | None = None,
    data_root: str | None = None,
    ctx: D.DistContext | None = None,
) -> EvalOutcome:
    """Build the model of ``cfg`` (default: the config saved in the checkpoint), load the
    checkpoint's weights and evaluate on ``split`` (default ``data.val_split``) of ``data_root``
    (default ``data.root``). Works in one process or under torchrun (results gathered over ranks).
    The checkpoint's category map is used, so labels map back to the ids it was trained on.
    """
    state = load_checkpoint(checkpoint)
    cfg = cfg if cfg is not None else checkpoint_config(checkpoint, state)
    updates: dict[str, Any] = {}
    if split is not None:
        updates["val_split"] = split
    if data_root is not None:
        updates["root"] = data_root
        updates["generate_shapes"] = False
    if updates:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
    ctx = ctx or D.init_distributed(cfg.train.device)
    root = prepare_data_root(cfg.data, ctx, (cfg.data.val_split,))
    task = make_task(cfg, root)
    checked = run_preflight_once(root, {"val": cfg.data.val_split}, task.check_iou_type, cfg.data.skip_invalid)
    task.exclusions = checked.exclusions
    saved = saved_category_map(checkpoint, state)
    # the checkpoint's labels: a subset run scores only its categories, in its label order
    _, val_ds = task.build_datasets(train=False, val=True, category_map=saved)
    missing = sorted(set(task.category_map.category_ids) - {c["id"] for c in val_ds.coco.dataset["categories"]})
    if missing:
        raise CheckpointError(
            f"checkpoint {checkpoint} was trained on category ids {list(task.category_map.category_ids)}; "
            f"the {cfg.data.val_split} split lacks {missing}"
        )
    model = task.build_model(task.category_map.num_classes)
    load_run_weights(model, state, checkpoint)
    model = optimize_for_inference(model.to(ctx.device))  # after loading: folding renames norm keys
    loader = build_eval_loader(val_ds, cfg.data, ctx, task.collate)
    metrics, table = task.evaluate(model, loader, ctx)
    return EvalOutcome(metrics, table)


def run_checkpoint_cli(args: Any, write: Callable[[EvalOutcome], None] | None = None) -> int:
    """Evaluate per parsed :func:`add_checkpoint_arguments` arguments, print the table and call
    ``write`` with the outcome (rank 0); a user error is a message and exit code 2."""
    from backbones_tools.distributed import cleanup_distributed
    from backbones_tools.errors import debug_requested, run_cli

    def evaluate_and_report() -> int:
        from backbones import keep_freed_memory

        keep_freed_memory()  # an inference process: no page faults on every batch
        outcome = run_from_args(args)
        if _is_main():
            print(outcome.table)
            if write is not None:
                write(outcome)
        return 0

    try:
        return run_cli(evaluate_and_report, debug=getattr(args, "debug", False) or debug_requested([]))
    finally:
        cleanup_distributed()


def main(argv: list[str] | None = None) -> int:
    """``python -m backbones_tools.engine.evaluate --checkpoint last.pth [--config c.yaml] [--split val2017]``:
    evaluate a checkpoint, print the table, optionally write the metrics as JSON (rank 0)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--json", "--out", dest="json", help="write the metrics to this JSON file")
    args = parser.parse_args(argv)

    def write(outcome: EvalOutcome) -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(outcome.metrics, indent=1), encoding="utf-8")

    return run_checkpoint_cli(args, write)


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def add_checkpoint_arguments(parser: Any, *, required: bool = True) -> None:
    """``--checkpoint``, ``--config``, ``--set``, ``--split``, ``--data-root``, ``--debug``."""
    add_checkpoint_source(parser, required=required)
    add_split_source(parser)
    add_debug(parser)


def run_from_args(args: Any) -> EvalOutcome:
    """Evaluate per parsed :func:`add_checkpoint_arguments` arguments."""
    cfg = None
    if args.config or args.overrides:
        cfg = checkpoint_config(args.checkpoint, load_checkpoint(args.checkpoint), args.config, args.overrides)
    return evaluate_checkpoint(args.checkpoint, cfg, split=args.split, data_root=args.data_root)


if __name__ == "__main__":
    import sys

    sys.exit(main())
