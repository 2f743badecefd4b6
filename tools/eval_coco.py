"""Evaluate a COCO results JSON against a ground-truth JSON (bbox or segm AP, per-class AP),
or a trained checkpoint on a dataset split.

    python tools/eval_coco.py --gt instances_val2017.json --results results.json \
        [--iou-type bbox|segm] [--backend pycocotools|faster_coco_eval] [--out metrics.json]
    python tools/eval_coco.py --checkpoint runs/det/<run>/best.pth [--config c.yaml] [--set k=v] \
        [--split val2017] [--data-root DIR] [--out metrics.json]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from typing import Any

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.cli_args import add_checkpoint_source, add_debug, add_split_source  # noqa: E402
from backbones_tools.data import CategoryMap, CocoFormatError, read_json  # noqa: E402
from backbones_tools.evaluation import BACKENDS, STAT_NAMES, CocoEvaluator, format_table  # noqa: E402
from backbones_tools.errors import debug_requested, run_cli  # noqa: E402
from backbones_tools.files import atomic_write_json, json_safe  # noqa: E402


def _versions(backend: str) -> dict[str, str]:
    names = ["pycocotools", "numpy", "torch"] + (["faster-coco-eval"] if backend != "pycocotools" else [])
    out = {"python": sys.version.split()[0]}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def evaluate_results_file(gt: str, results: str, iou_type: str = "bbox",
                          backend: str = "pycocotools", strict: bool = True) -> dict[str, Any]:
    """Evaluate ``results`` against ``gt``; returns the metrics dict written by the CLI."""
    evaluator = CocoEvaluator(gt, [iou_type], backend=backend, strict=strict)
    res = read_json(results)
    if not isinstance(res, list):
        raise CocoFormatError(f"{results}: a COCO results file must be a JSON list")
    evaluator.add_results(res, iou_type)
    result = evaluator.evaluate()[iou_type]
    categories = CategoryMap.from_coco_categories(evaluator.gt["categories"])
    return {
        "iou_type": iou_type,
        "backend": backend,
        "gt": str(gt),
        "results": str(results),
        "num_results": len(res),
        "stats": result.stats,
        "stat_names": list(STAT_NAMES),
        "metrics": result.as_dict(),
        "per_class": result.per_category,
        "categories": categories.to_dict(),
        "problems": {"dropped": result.report.dropped, "description": result.report.describe()},
        "versions": _versions(backend),
        "table": format_table(result),
    }


def _write_json(path: str, metrics: dict[str, Any]) -> None:
    print(f"wrote {atomic_write_json(path, json_safe(metrics), indent=2)}")


def evaluate_checkpoint_args(args: argparse.Namespace) -> int:
    """``--checkpoint`` mode: build the checkpoint's model (its saved config, or ``--config``),
    evaluate it on a split with the training engine's evaluation, print and write the metrics."""
    from backbones_tools.engine.evaluate import run_checkpoint_cli

    def write(outcome: Any) -> None:
        if args.out:
            _write_json(args.out, {"checkpoint": str(args.checkpoint), "metrics": outcome.metrics,
                                   "table": outcome.table, "versions": _versions("pycocotools")})

    return run_checkpoint_cli(args, write)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gt", help="COCO ground-truth annotation JSON")
    parser.add_argument("--results", help="COCO results JSON (list of detections)")
    parser.add_argument("--iou-type", default="bbox", choices=["bbox", "segm"])
    parser.add_argument("--backend", default="pycocotools", choices=list(BACKENDS))
    parser.add_argument("--out", help="write the metrics JSON here")
    parser.add_argument("--lenient", action="store_true",
                        help="drop (and report) results with unknown image/category ids instead of failing")
    model = parser.add_argument_group("checkpoint mode (evaluate a trained model on a dataset split)")
    add_checkpoint_source(model, required=False)
    add_split_source(model)
    add_debug(model)
    args = parser.parse_args(argv)
    if args.checkpoint:
        if args.gt or args.results:
            parser.error("--checkpoint evaluates a model on a dataset split; it takes no --gt/--results")
        return evaluate_checkpoint_args(args)
    if not args.gt or not args.results:
        parser.error("give --gt and --results (a results JSON), or --checkpoint (a trained model)")

    def results_mode() -> int:
        try:
            metrics = evaluate_results_file(args.gt, args.results, args.iou_type, args.backend,
                                            strict=not args.lenient)
        except ImportError as exc:  # the chosen backend is not installed; the message says what to install
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(metrics["table"])
        if args.out:
            _write_json(args.out, metrics)
        return 0

    return run_cli(results_mode, debug=args.debug or debug_requested([]))


if __name__ == "__main__":
    sys.exit(main())
