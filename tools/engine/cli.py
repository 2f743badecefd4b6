"""Command line shared by ``tools/train_det.py`` and ``tools/train_seg.py``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from backbones.weights import WeightsFileError, WeightsMismatchError
from tools.config.loader import ConfigError, load_config
from tools.config.schema import TrainConfig
from tools.engine.checkpoint import CheckpointError
from tools.engine.data import DataRootError
from tools.engine.init_weights import resolve_weights_path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIGS = {
    "det": REPO_ROOT / "configs" / "det" / "demo_shapes_faster_rcnn_r18.yaml",
    "seg": REPO_ROOT / "configs" / "seg" / "demo_shapes_deeplabv3plus_r18.yaml",
}


def build_parser(task: str) -> argparse.ArgumentParser:
    """Arguments of the training scripts."""
    what = "detection" if task == "det" else "semantic segmentation"
    parser = argparse.ArgumentParser(
        description=f"Train a {what} model from a YAML config (single process, or DDP under torchrun). "
        "Without arguments: the CPU demo on the embedded synthetic shapes dataset.")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIGS[task],
                        help=f"YAML config (default: {DEFAULT_CONFIGS[task].relative_to(REPO_ROOT)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.01 (repeatable)")
    parser.add_argument("--data-root", help="COCO-layout dataset folder (annotations/instances_{train,val}2017.json, "
                        "train2017/, val2017/); replaces data.root and turns off shapes generation")
    parser.add_argument("--output-dir", type=Path, help="run folder (default: output_dir of the config, "
                        "else runs/<task>/<config name>)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from <output-dir>/last.pth (or the given checkpoint)")
    return parser


def check_backbone_weights(cfg: TrainConfig, config_path: Path) -> TrainConfig:
    """Resolve ``model.backbone.weights`` (relative paths: the working directory, then the
    repository, where run folders go) and stop before anything runs when the file is missing."""
    bb = cfg.model.backbone
    if not bb.weights:
        return cfg
    path = resolve_weights_path(bb.weights, (REPO_ROOT,))
    if "://" not in path and not Path(path).is_file():
        first = ""
        if cfg.task == "seg" and "runs/det/" in bb.weights.replace("\\", "/"):
            first = ("this config fine-tunes the trunk of a detection run: train it first with\n"
                     "    python tools/train_det.py" + _same_data_hint(cfg) + "\n")
        raise ConfigError(
            f"model.backbone.weights: {bb.weights} not found (set in {config_path}).\n{first}"
            "Point it at a trunk, detector or segmenter checkpoint with --set model.backbone.weights=PATH, "
            "or train the trunk from scratch with --set model.backbone.weights=null.")
    bb_new = bb.model_copy(update={"weights": path})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"backbone": bb_new})})


def _same_data_hint(cfg: TrainConfig) -> str:
    return "" if cfg.data.generate_shapes else f" --data-root {cfg.data.root}"


def main(task: str, argv: list[str] | None = None) -> int:
    """Parse, load the config, train; returns the exit status."""
    args = build_parser(task).parse_args(argv)
    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides += [f"data.root={args.data_root}", "data.generate_shapes=false"]
    from tools.engine import distributed as D
    from tools.engine.trainer import NonFiniteLossError, train

    try:
        cfg = load_config(args.config, overrides)
        if cfg.task != task:
            raise ConfigError(f"{args.config} is a {cfg.task!r} config; use tools/train_{cfg.task}.py")
        cfg = check_backbone_weights(cfg, args.config)
        output_dir = args.output_dir or Path(cfg.output_dir or REPO_ROOT / "runs" / task / args.config.stem)
        ctx = D.init_distributed(cfg.train.device)
        logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                            format=f"[rank {ctx.rank}] %(levelname)s %(name)s: %(message)s")
        result = train(cfg, output_dir, resume=args.resume if args.resume is True else args.resume or False)
    except (ConfigError, DataRootError, CheckpointError, WeightsFileError, WeightsMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    finally:
        from tools.engine.distributed import cleanup_distributed

        cleanup_distributed()
    if ctx.is_main:
        print(result.table)
        best = result.best
        print(f"run folder: {result.output_dir}")
        print(f"training: {result.iterations} iterations in {result.train_seconds:.0f} s "
              f"({result.train_seconds / max(result.iterations, 1):.2f} s/iter)")
        if best.get("value") is not None:
            print(f"best {best['metric']} = {best['value']:.4f} (epoch {best['epoch']})")
        if result.png is not None:
            print(f"predictions drawn to {result.png}")
    return 0
