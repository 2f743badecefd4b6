"""Command line shared by ``tools/train_det.py`` and ``tools/train_seg.py``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from backbones_tools.cli_args import add_debug, add_overrides
from backbones_tools.config.loader import ConfigError, load_config
from backbones_tools.config.schema import TrainConfig
from backbones_tools.config.shipped import demo_config, shipped_configs_dir
from backbones_tools.errors import debug_requested, run_cli


def build_parser(task: str) -> argparse.ArgumentParser:
    """Arguments of the training scripts."""
    what = "detection" if task == "det" else "semantic segmentation"
    parser = argparse.ArgumentParser(
        description=f"Train a {what} model from a YAML config (single process, or DDP under torchrun). "
        "Without arguments: the CPU demo on the embedded synthetic shapes dataset.")
    demo = demo_config(task)
    parser.add_argument("--config", type=Path, default=demo,
                        help=f"YAML config, a file or a shipped one such as {task}/{demo.name} "
                        f"(default: that demo; shipped configs: {shipped_configs_dir()})")
    add_overrides(parser, "optim.lr=0.01")
    parser.add_argument("--data-root", help="COCO-layout dataset folder (annotations/instances_{train,val}2017.json, "
                        "train2017/, val2017/); replaces data.root and turns off shapes generation")
    parser.add_argument("--output-dir", type=Path, help="run folder (default: output_dir of the config, "
                        "else runs/<task>/<config name>)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT|auto",
                        help="continue from <output-dir>/last.pth (or the given checkpoint); 'auto': "
                        "resume if last.pth exists, else start fresh (for requeued jobs)")
    add_debug(parser)
    return parser


def check_backbone_weights(cfg: TrainConfig, config_path: Path) -> TrainConfig:
    """Stop before anything runs when ``model.backbone.weights`` names a missing file (a relative
    path is relative to the working directory, where run folders go)."""
    bb = cfg.model.backbone
    if not bb.weights:
        return cfg
    path = bb.weights if "://" in bb.weights else str(Path(bb.weights).expanduser())
    if "://" not in path and not Path(path).is_file():
        first = ""
        if cfg.task == "seg" and "runs/det/" in bb.weights.replace("\\", "/"):
            first = ("this config fine-tunes the trunk of a detection run: train it first with\n"
                     f"    python tools/train_det.py{_same_data_hint(cfg)}   (in a clone; elsewhere: backbones-train-det)\n")
        raise ConfigError(
            f"model.backbone.weights: {bb.weights} not found (set in {config_path}).\n{first}"
            "Point it at a trunk, detector or segmenter checkpoint with --set model.backbone.weights=PATH, "
            "or train the trunk from scratch with --set model.backbone.weights=null.")
    bb_new = bb.model_copy(update={"weights": path})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"backbone": bb_new})})


def _same_data_hint(cfg: TrainConfig) -> str:
    return "" if cfg.data.generate_shapes else f" --data-root {cfg.data.root}"


def resolve_resume(resume: bool | str, output_dir: Path) -> bool | str:
    """``--resume`` (True: ``last.pth`` of the run folder), a checkpoint path, or ``auto``:
    resume when ``last.pth`` exists and start fresh otherwise, so a requeued job needs no edits."""
    if resume == "auto":
        return (output_dir / "last.pth").is_file()
    return resume


def main_det(argv: list[str] | None = None) -> int:
    """``tools/train_det.py`` / ``backbones-train-det``."""
    return main("det", argv)


def main_seg(argv: list[str] | None = None) -> int:
    """``tools/train_seg.py`` / ``backbones-train-seg``."""
    return main("seg", argv)


def main(task: str, argv: list[str] | None = None) -> int:
    """Parse, load the config, train; returns the exit status (0 done, 2 a user error,
    3 a non-finite loss, 75 stopped by a signal with a resumable checkpoint)."""
    args = build_parser(task).parse_args(argv)
    from backbones_tools.distributed import cleanup_distributed
    from backbones_tools.engine.preemption import PREEMPTED_EXIT_CODE, Preempted
    from backbones_tools.engine.trainer import NonFiniteLossError

    try:
        return run_cli(lambda: _train(task, args), debug=args.debug or debug_requested([]))
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except Preempted as exc:
        print(f"{exc}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    finally:
        cleanup_distributed()


def _train(task: str, args: argparse.Namespace) -> int:
    from backbones import keep_freed_memory
    from backbones_tools import distributed as D
    from backbones_tools.engine.trainer import train

    # the activations of every step reuse freed memory instead of faulting it in again
    keep_freed_memory()

    overrides = list(args.overrides)
    if args.data_root is not None:
        overrides += [f"data.root={args.data_root}", "data.generate_shapes=false"]
    cfg = load_config(args.config, overrides)
    if cfg.task != task:
        raise ConfigError(f"{args.config} is a {cfg.task!r} config; use tools/train_{cfg.task}.py")
    cfg = check_backbone_weights(cfg, args.config)
    output_dir = args.output_dir or Path(cfg.output_dir or Path("runs") / task / args.config.stem)
    ctx = D.init_distributed(cfg.train.device)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING,
                        format=f"[rank {ctx.rank}] %(levelname)s %(name)s: %(message)s")
    result = train(cfg, output_dir, resume=resolve_resume(args.resume, output_dir))
    if ctx.is_main:
        _print_summary(result)
    return 0


def _print_summary(result) -> None:
    print(result.table)
    best = result.best
    print(f"run folder: {result.output_dir}")
    print(f"training: {result.iterations} iterations in {result.train_seconds:.0f} s "
          f"({result.train_seconds / max(result.iterations, 1):.2f} s/iter)")
    if best.get("value") is not None:
        print(f"best {best['metric']} = {best['value']:.4f} (epoch {best['epoch']})")
    if result.png is not None:
        print(f"predictions drawn to {result.png}")
