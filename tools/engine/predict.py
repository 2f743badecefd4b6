"""Run a training checkpoint over image files (the logic of ``tools/predict.py``).

The checkpoint's model is rebuilt as :mod:`backbones_tools.engine.evaluate` rebuilds it (its saved config,
or ``--config``, plus ``--set`` overrides; its category map; its weights), made fast with
:func:`heads.optimize_for_inference` and run batched over the images:

* detection: a COCO results JSON (``predictions.json``; ``predictions_segm.json`` too for Mask
  R-CNN) with the checkpoint's category ids and every detection the model returns, image ids from
  the file names or a ground-truth file, plus one overlay PNG per image (``overlays/``);
* segmentation: an index PNG of class ids per image (``masks/``, PIL ``P`` mode with the class
  palette attached, at the image's own size) plus an overlay PNG (``overlays/``).

Images are preprocessed exactly as the training run's evaluation preprocessed them, and a batch
only ever holds images of one size (so no image is padded to another's size), which is why the
results of a detector reproduce the run's own evaluation. Files that cannot be read are reported
and skipped. ``manifest.json`` lists every input with its image id and output files.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from backbones import keep_freed_memory
from backbones_tools.cli_args import add_checkpoint_source, add_debug

#: file suffixes taken from a folder (explicitly named files and glob matches are all tried)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
#: opacity of the class colours over the image in segmentation overlays
OVERLAY_ALPHA = 0.5
#: how many skipped file names the console report lists (manifest.json lists them all)
REPORT_LIMIT = 20
#: ``--precision`` choices and the dtype each computes in.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
_GLOB_CHARS = re.compile(r"[*?\[]")
_DIGITS = re.compile(r"\d+")

EPILOG = """\
example:
  python tools/predict.py --checkpoint runs/det/demo_shapes_faster_rcnn_r18/best.pth \\
      --images data/shapes/val2017 --gt data/shapes/annotations/instances_val2017.json --out pred/
  python tools/eval_coco.py --gt data/shapes/annotations/instances_val2017.json \\
      --results pred/predictions.json

PATH may be an image file, a folder (its image files, not recursive) or a quoted glob
("photos/**/*.jpg"). Files that cannot be read are reported and skipped.
Detection writes OUT/predictions.json (COCO results: every detection the model returns, so that
COCO evaluation sees the whole score range; Mask R-CNN adds predictions_segm.json) and
OUT/overlays/<name>.png. Segmentation writes OUT/masks/<name>.png (class ids, palette attached)
and OUT/overlays/<name>.png. OUT/manifest.json maps every input to its image id and outputs.
"""


# ----------------------------------------------------------------------------- the model


@dataclass
class Predictor:
    """A checkpoint's model ready for inference, with what is needed to read its outputs."""

    task: Any  # backbones_tools.engine.tasks.Task (its config, category map, label offset, ...)
    model: nn.Module
    device: torch.device
    checkpoint: Path

    @property
    def cfg(self) -> Any:
        return self.task.cfg

    @property
    def kind(self) -> str:
        """``"det"`` or ``"seg"``."""
        return self.task.name

    @property
    def category_map(self) -> Any:
        return self.task.category_map


def load_predictor(
    checkpoint: str | os.PathLike[str],
    *,
    config: str | None = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    max_size: int | None = None,
    gt: Mapping[str, Any] | None = None,
    precision: str = "fp32",
) -> Predictor:
    """Rebuild the model of a training checkpoint (see :func:`checkpoint_config`), load its
    weights and optimise it for inference on ``device`` (``auto``, ``cpu`` or ``cuda``).

    Labels map back to the checkpoint's category map (or, for a checkpoint without one, to the
    categories of ``gt``, a COCO ground-truth dict). ``max_size`` caps a detector's resized
    longer side (its transform's ``max_size``); for a segmenter it is applied by :func:`predict`.
    ``precision="bf16"`` computes in bf16 (``heads.optimize_for_inference(dtype=torch.bfloat16)``:
    a detector's backbone and FPN, a segmenter whole), with a warning where the CPU emulates bf16.
    """
    from backbones_tools.data import CategoryMap
    from backbones_tools.data.errors import CocoFormatError
    from backbones_tools.distributed import resolve_device
    from backbones_tools.engine.checkpoint import CheckpointError, load_checkpoint
    from backbones_tools.engine.run_checkpoint import checkpoint_config, load_run_weights, saved_category_map
    from backbones_tools.engine.tasks import _check_num_classes, make_task
    from heads import optimize_for_inference

    if device == "cuda" and not torch.cuda.is_available():
        from backbones_tools.config.loader import ConfigError

        raise ConfigError("--device cuda: no CUDA device is available here; use --device auto or cpu")
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    cfg = checkpoint_config(checkpoint, state, config, overrides)
    category_map = saved_category_map(checkpoint, state)
    if category_map is None and gt is not None:
        category_map = CategoryMap.from_coco_categories(gt["categories"], subset=cfg.data.categories)
    elif category_map is None:
        raise CheckpointError(f"{checkpoint} holds no category map; pass the ground truth it was "
                              "trained with as --gt to take its categories")
    if gt is not None:
        missing = sorted(set(category_map.category_ids) - {c.get("id") for c in gt.get("categories", [])})
        if missing:
            raise CocoFormatError(f"checkpoint {checkpoint} predicts category ids {list(category_map.category_ids)}; "
                                  f"the --gt file lacks {missing}")
    task = make_task(cfg, Path(cfg.data.root))
    task.category_map = category_map
    model = task.build_model(_check_num_classes(cfg, category_map))
    load_run_weights(model, state, checkpoint, config)
    if max_size is not None:
        if max_size < 1:
            raise ValueError(f"--max-size must be a positive number of pixels, got {max_size}")
        if task.name == "det":
            model.transform.max_size = int(max_size)
    dev = resolve_device(device)
    dtype = inference_dtype(precision, dev)
    model = optimize_for_inference(model.to(dev), dtype=dtype)  # after loading: folding renames norm keys
    return Predictor(task=task, model=model, device=dev, checkpoint=checkpoint)


def inference_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of ``--precision`` (fp32, bf16); bf16 on a CPU without native bf16 runs, emulated
    and several times slower, with a warning saying so."""
    from backbones_tools.engine.precision import cpu_has_native_bf16, cpu_model_name

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(f"--precision bf16: {cpu_model_name()} has no native bf16 (AVX512-BF16 or AMX); bf16 "
                      "is emulated and inference is several times slower than fp32", stacklevel=2)
    return PRECISIONS[precision]


# ----------------------------------------------------------------------------- the images


def collect_images(patterns: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The image files named by ``patterns``: files as they are, a folder's image files
    (:data:`IMAGE_SUFFIXES`, sorted, not recursive), glob matches (sorted, ``**`` recursive).
    Duplicates are dropped. A path that does not exist and a glob matching nothing are errors."""
    found: list[Path] = []
    for pattern in patterns:
        text = str(pattern)
        if _GLOB_CHARS.search(text) and not Path(text).exists():
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            if not matches:
                raise FileNotFoundError(f"--images {text!r} matches no file")
        else:
            path = Path(text)
            if not path.exists():
                raise FileNotFoundError(f"--images {text}: no such file or folder")
            matches = [path]
        for path in matches:
            if path.is_dir():
                found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            elif path.is_file():
                found.append(path)
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def image_id_from_name(path: str | os.PathLike[str]) -> int | None:
    """The image id in a file name: the last run of digits in its stem
    (``000000000139.jpg`` -> 139, ``COCO_val2014_000000000042.jpg`` -> 42); None without digits."""
    runs = _DIGITS.findall(Path(path).stem)
    return int(runs[-1]) if runs else None


def image_ids_from_names(paths: Sequence[Path]) -> tuple[dict[Path, int], list[str]]:
    """Image id of every path from its file name (:func:`image_id_from_name`); a name without
    digits, or one whose id an earlier file already took, gets a fresh id above all the others.
    Returns the ids and a warning per such file."""
    ids: dict[Path, int] = {}
    warnings: list[str] = []
    taken: set[int] = set()
    pending: list[tuple[Path, str]] = []
    for path in paths:
        image_id = image_id_from_name(path)
        if image_id is None:
            pending.append((path, "has no digits in its name"))
        elif image_id in taken:
            pending.append((path, f"has image id {image_id}, as an earlier file"))
        else:
            taken.add(image_id)
            ids[path] = image_id
    next_id = max(taken, default=0) + 1
    for path, why in pending:
        ids[path] = next_id
        warnings.append(f"{path} {why}: it gets image id {next_id} (manifest.json lists every id)")
        next_id += 1
    return ids, warnings


def image_ids_from_gt(paths: Sequence[Path], gt: Mapping[str, Any], source: str = "--gt") -> dict[Path, int]:
    """Image id of every path from the ``file_name`` entries of a COCO ground truth: the entry
    whose file name (with any folders it names) is the end of the path. A path that no entry, or
    more than one, matches is a :class:`~backbones_tools.data.errors.CocoFormatError`."""
    from backbones_tools.data.errors import CocoFormatError

    by_name: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for info in gt.get("images", []):
        parts = Path(str(info.get("file_name", ""))).parts
        if parts:
            by_name.setdefault(parts[-1], []).append((parts, int(info["id"])))
    ids: dict[Path, int] = {}
    unlisted = []
    for path in paths:
        parts = path.resolve().parts
        hits = {image_id for gt_parts, image_id in by_name.get(path.name, [])
                if parts[-len(gt_parts):] == gt_parts}
        if len(hits) == 1:
            ids[path] = hits.pop()
        elif hits:
            raise CocoFormatError(f"{source} lists {path.name} under several image ids {sorted(hits)}")
        else:
            unlisted.append(str(path))
    if unlisted:
        shown = ", ".join(unlisted[:REPORT_LIMIT]) + (" ..." if len(unlisted) > REPORT_LIMIT else "")
        raise CocoFormatError(f"{source} does not list {len(unlisted)} of the images (no file_name "
                              f"matches): {shown}")
    return ids


def unique_stems(paths: Sequence[Path]) -> dict[Path, str]:
    """Output name (without suffix) per input: its stem, ``stem-2``, ... where stems repeat."""
    out: dict[Path, str] = {}
    used: set[str] = set()
    for path in paths:
        name, n = path.stem, 1
        while name in used:
            n += 1
            name = f"{path.stem}-{n}"
        used.add(name)
        out[path] = name
    return out


# ----------------------------------------------------------------------------- prediction


@dataclass
class _Item:
    index: int
    path: Path
    image: np.ndarray  # uint8 [H, W, 3] as read
    tensor: torch.Tensor  # the model's input


@dataclass
class PredictOutcome:
    """What :func:`predict` wrote and what it skipped."""

    out_dir: Path
    kind: str
    num_images: int = 0
    num_detections: int = 0
    results: dict[str, Path] = field(default_factory=dict)  # iou type -> COCO results JSON
    masks: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)
    manifest: Path | None = None


def _batches(items: Iterable[_Item], batch_size: int) -> Iterator[list[_Item]]:
    """Batches of inputs of one shape, in the order they fill up (the rest at the end)."""
    buckets: dict[tuple[int, ...], list[_Item]] = {}
    for item in items:
        bucket = buckets.setdefault(tuple(item.tensor.shape), [])
        bucket.append(item)
        if len(bucket) >= batch_size:
            yield buckets.pop(tuple(item.tensor.shape))
    yield from buckets.values()


def _segmentation_input(image: np.ndarray, eval_size: int | None, max_size: int | None) -> torch.Tensor:
    """The evaluation preprocessing of the run (shorter side to ``eval_size``, ImageNet
    normalisation), then the longer side down to ``max_size`` if it is longer."""
    import albumentations as A
    import cv2

    from backbones_tools.data.transforms import SegmentationTransform

    ops: list[Any] = []
    if eval_size is not None:
        ops.append(A.SmallestMaxSize(max_size=eval_size, interpolation=cv2.INTER_LINEAR))
    if max_size is not None:
        h, w = image.shape[:2]
        longer = max(h, w) * (eval_size / min(h, w) if eval_size is not None else 1.0)
        if longer > max_size:
            ops.append(A.LongestMaxSize(max_size=max_size, interpolation=cv2.INTER_LINEAR))
    transform = SegmentationTransform(ops)
    tensor, _ = transform(image, np.zeros(image.shape[:2], dtype=np.uint8))
    return tensor


def _write_index_png(mask: np.ndarray, num_labels: int, ignore_index: int | None, path: Path) -> Path:
    """Class ids as a PIL ``P``-mode PNG with the class palette attached (16-bit grey when the
    ids do not fit in a byte)."""
    from PIL import Image

    from backbones_tools.data.palette import palette_array

    path.parent.mkdir(parents=True, exist_ok=True)
    if num_labels > 256:
        Image.fromarray(mask.astype(np.uint16)).save(path)
        return path
    img = Image.fromarray(mask.astype(np.uint8))
    img.putpalette(palette_array(num_labels, ignore_index).tobytes())
    img.save(path)
    return path


def blend_mask(image: np.ndarray, mask: np.ndarray, num_labels: int, ignore_index: int | None = None,
               alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``image`` with the class colours (:func:`backbones_tools.data.palette.colorize`) blended over every
    non-background pixel."""
    from backbones_tools.data.palette import colorize

    colours = colorize(mask, num_labels, ignore_index).astype(np.float32)
    out = image.astype(np.float32)
    fg = np.asarray(mask) != 0
    out[fg] = (1.0 - alpha) * out[fg] + alpha * colours[fg]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def predict(
    predictor: Predictor,
    paths: Sequence[Path],
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    image_ids: Mapping[Path, int] | None = None,
    score_thresh: float | None = None,
    max_size: int | None = None,
    draw: bool = True,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> PredictOutcome:
    """Run ``predictor`` over ``paths`` and write the outputs under ``out_dir`` (module docstring).

    ``batch_size`` defaults to the config's ``data.eval_batch_size``; a batch holds images of one
    size only. ``image_ids`` (detection) default to the file names' digits. ``score_thresh``
    (default ``eval.score_thresh``) chooses the detections drawn; the results JSON keeps all.
    ``max_size`` caps a segmenter's input longer side (a detector's is set by
    :func:`load_predictor`). Unreadable files are skipped and listed in the outcome.
    """
    from tqdm import tqdm

    cfg = predictor.cfg
    batch_size = int(batch_size or cfg.data.eval_batch_size)
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    score_thresh = cfg.eval.score_thresh if score_thresh is None else float(score_thresh)
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    out_dir = Path(out_dir)
    outcome = PredictOutcome(out_dir=out_dir, kind=predictor.kind)
    names = unique_stems(paths)
    detection = predictor.kind == "det"
    if detection and image_ids is None:
        image_ids, warnings = image_ids_from_names(paths)
        for warning in warnings:
            log(f"warning: {warning}")
    num_labels = predictor.category_map.num_classes + 1
    ignore_index = getattr(cfg.model, "ignore_index", None)
    iou_types = predictor.task.iou_types if detection else ()
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    records: dict[int, dict[str, Any]] = {}
    bar = tqdm(total=len(paths), desc="predict", unit="img", dynamic_ncols=True, disable=not progress)
    items = _read_inputs(paths, predictor, max_size, outcome, bar)

    with torch.inference_mode():
        for batch in _batches(items, batch_size):
            if detection:
                outputs = predictor.task.predict(predictor.model, [it.tensor for it in batch], predictor.device)
                for item, output in zip(batch, outputs):
                    records[item.index] = _write_detection(predictor, item, output, image_ids[item.path],
                                                           names[item.path], out_dir, iou_types, score_thresh,
                                                           draw, results, outcome)
            else:
                x = torch.stack([it.tensor for it in batch]).to(predictor.device)
                logits = predictor.model(x)["out"]
                for item, lg in zip(batch, logits):
                    records[item.index] = _write_segmentation(item, lg, names[item.path], out_dir, num_labels,
                                                              ignore_index, draw, outcome)
            outcome.num_images += len(batch)
            bar.update(len(batch))
    bar.close()
    _write_listings(predictor, outcome, records, results, iou_types)
    return outcome


def _read_inputs(paths: Sequence[Path], predictor: Predictor, max_size: int | None, outcome: PredictOutcome,
                 bar: Any) -> Iterator[_Item]:
    """Each readable image with its model input; unreadable files go to ``outcome.skipped``."""
    from backbones_tools.data.errors import ImageLoadError
    from backbones_tools.data.images import load_rgb
    from backbones_tools.data.transforms import build_detection_transforms

    detection = predictor.kind == "det"
    det_transform = build_detection_transforms(False)
    eval_size = None if detection else predictor.cfg.data.seg_aug.eval_size
    for index, path in enumerate(paths):
        try:
            image = load_rgb(path)
        except (ImageLoadError, FileNotFoundError, OSError) as exc:
            outcome.skipped.append((path, str(exc)))
            bar.update(1)
            continue
        if detection:  # exactly the evaluation's input: 0..1, the detector resizes internally
            tensor, _ = det_transform(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
        else:
            tensor = _segmentation_input(image, eval_size, max_size)
        yield _Item(index, path, image, tensor)


def _write_listings(predictor: Predictor, outcome: PredictOutcome, records: Mapping[int, dict[str, Any]],
                    results: Mapping[int, dict[str, list[dict[str, Any]]]], iou_types: Sequence[str]) -> None:
    """The COCO results JSON of each IoU type (detection) and ``manifest.json``, in input order."""
    from backbones_tools.files import atomic_write_text

    order = sorted(records)
    for iou_type in iou_types:
        flat = [r for i in order for r in results[i][iou_type]]
        name = "predictions.json" if iou_type == "bbox" else f"predictions_{iou_type}.json"
        outcome.results[iou_type] = atomic_write_text(outcome.out_dir / name, json.dumps(flat))
    manifest = {
        "checkpoint": str(predictor.checkpoint), "task": predictor.kind,
        "categories": predictor.category_map.to_dict(),
        "results": {k: v.name for k, v in outcome.results.items()},
        "images": [records[i] for i in order],
        "skipped": [{"file": str(p), "error": why} for p, why in outcome.skipped],
    }
    outcome.manifest = atomic_write_text(outcome.out_dir / "manifest.json", json.dumps(manifest, indent=1))


def _write_detection(predictor: Predictor, item: _Item, output: Mapping[str, torch.Tensor], image_id: int,
                     name: str, out_dir: Path, iou_types: Sequence[str], score_thresh: float, draw: bool,
                     results: dict[int, dict[str, list[dict[str, Any]]]], outcome: PredictOutcome) -> dict[str, Any]:
    from backbones_tools.data.draw import draw_gt_and_predictions, save_png
    from backbones_tools.evaluation.results import prediction_to_results

    results[item.index] = prediction_to_results(image_id, output, predictor.category_map, iou_types)
    outcome.num_detections += len(output["scores"])
    record: dict[str, Any] = {"file": str(item.path), "image_id": image_id, "detections": len(output["scores"])}
    if draw:
        drawn = draw_gt_and_predictions(item.image, predictor.category_map, None, output, score_thresh)
        overlay = save_png(drawn, out_dir / "overlays" / f"{name}.png")
        outcome.overlays.append(overlay)
        record["overlay"] = str(overlay.relative_to(out_dir))
    return record


def _write_segmentation(item: _Item, logits: torch.Tensor, name: str, out_dir: Path, num_labels: int,
                        ignore_index: int | None, draw: bool, outcome: PredictOutcome) -> dict[str, Any]:
    from PIL import Image

    h, w = item.image.shape[:2]
    if tuple(logits.shape[-2:]) != (h, w):  # back to the file's size
        logits = torch.nn.functional.interpolate(logits[None].float(), size=(h, w), mode="bilinear",
                                                 align_corners=False)[0]
    mask = logits.argmax(0).to(torch.int32).cpu().numpy()
    path = _write_index_png(mask, num_labels, ignore_index, out_dir / "masks" / f"{name}.png")
    outcome.masks.append(path)
    record: dict[str, Any] = {"file": str(item.path), "mask": str(path.relative_to(out_dir))}
    if draw:
        overlay = out_dir / "overlays" / f"{name}.png"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(blend_mask(item.image, mask, num_labels, ignore_index)).save(overlay)
        outcome.overlays.append(overlay)
        record["overlay"] = str(overlay.relative_to(out_dir))
    return record


# ----------------------------------------------------------------------------- the CLI


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Run a detection or segmentation training checkpoint over images: COCO results JSON\n"
                    "and overlays (detection), class-index PNGs and overlays (segmentation).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_source(parser, required=True)
    parser.add_argument("--images", required=True, nargs="+", metavar="PATH",
                        help="image files, folders (their image files) and globs")
    parser.add_argument("--out", help="output folder (default: a 'predict' folder next to the checkpoint)")
    parser.add_argument("--gt", help="COCO annotation JSON whose file_name entries give the image ids "
                                     "(detection; default: the digits in each file name, 000000000139.jpg -> 139)")
    parser.add_argument("--batch-size", type=_positive_int, help="images per forward pass (default: the config's "
                        "data.eval_batch_size); a batch holds images of one size only")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when available (default)")
    parser.add_argument("--score-thresh", type=float,
                        help="detections drawn in the overlays have at least this score (default: the "
                             "config's eval.score_thresh). predictions.json keeps every detection the "
                             "model returns (its own model.options.box_score_thresh applies), as COCO "
                             "evaluation wants")
    parser.add_argument("--max-size", type=_positive_int, metavar="PIXELS",
                        help="segmentation: resize the input's longer side down to this; detection: the "
                             "detector's max_size (its resize caps the longer side at it)")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="bf16: compute in bf16 (a detector's backbone and FPN, a segmenter whole), fast on "
                             "CPUs with AVX512-BF16 or AMX and on GPUs; outputs move by bf16 rounding (default: fp32)")
    parser.add_argument("--no-draw", action="store_true", help="write no overlay PNGs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_debug(parser)
    return parser


def run_from_args(args: argparse.Namespace) -> PredictOutcome:
    """Predict per parsed :func:`build_parser` arguments and print a summary."""
    from backbones_tools.data.coco_json import read_json, validate_coco_gt
    from backbones_tools.data.errors import ImageLoadError

    gt = None
    if args.gt:
        gt = read_json(args.gt)
        validate_coco_gt(gt, args.gt)  # ids, categories, references: named faults, not KeyErrors later
    paths = collect_images(args.images)
    if not paths:
        raise FileNotFoundError(f"no image file found in --images {' '.join(args.images)}")
    keep_freed_memory()  # this process only runs inference: no page faults on every batch
    predictor = load_predictor(args.checkpoint, config=args.config, overrides=args.overrides, device=args.device,
                               max_size=args.max_size, gt=gt, precision=args.precision)
    image_ids = None
    if gt is not None and predictor.kind == "det":
        image_ids = image_ids_from_gt(paths, gt, source=f"--gt {args.gt}")
    out_dir = Path(args.out) if args.out else Path(args.checkpoint).parent / "predict"
    outcome = predict(predictor, paths, out_dir, batch_size=args.batch_size, image_ids=image_ids,
                      score_thresh=args.score_thresh, max_size=args.max_size, draw=not args.no_draw,
                      progress=not args.quiet)
    if outcome.skipped:
        print(f"skipped {_count(len(outcome.skipped), 'unreadable file')}:", file=sys.stderr)
        for path, why in outcome.skipped[:REPORT_LIMIT]:
            print(f"  {path}: {why}", file=sys.stderr)
        if len(outcome.skipped) > REPORT_LIMIT:
            print(f"  ... and {len(outcome.skipped) - REPORT_LIMIT} more (all in {outcome.manifest})", file=sys.stderr)
    if outcome.num_images == 0:
        raise ImageLoadError(f"none of the {len(paths)} files in --images could be read as an image")
    if predictor.kind == "det":
        for path in outcome.results.values():
            print(f"wrote {path} ({_count(outcome.num_detections, 'detection')} on "
                  f"{_count(outcome.num_images, 'image')})")
    else:
        print(f"wrote {_count(len(outcome.masks), 'class-index PNG')} to {out_dir / 'masks'}")
    if outcome.overlays:
        print(f"wrote {_count(len(outcome.overlays), 'overlay')} to {out_dir / 'overlays'}")
    return outcome


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> int:
    """``python tools/predict.py --checkpoint RUN/best.pth --images PATH... [--out DIR]``; a
    user error is ``error: ...`` and exit code 2 (:func:`backbones_tools.errors.run_cli`)."""
    from backbones_tools.errors import debug_requested, run_cli

    args = build_parser().parse_args(argv)

    def run() -> int:
        run_from_args(args)
        return 0

    return run_cli(run, debug=args.debug or debug_requested([]))


if __name__ == "__main__":
    sys.exit(main())
