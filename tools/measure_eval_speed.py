"""Time ``eval_coco.py --results`` end to end against the plain pycocotools script, in fresh processes.

A seeded synthetic COCO set (default 5,000 images, 35,000 boxes, 50,000 detections over 80
categories) is written once; then, in turns for ``--rounds`` rounds, each contender runs in a new
Python process (imports, JSON parsing, validation, evaluate, accumulate, summarize):

- ``plain``: ``COCO(gt)``, ``loadRes``, ``COCOeval`` evaluate/accumulate/summarize (pycocotools);
- ``cli-pycocotools`` and ``cli-faster_coco_eval``: ``python tools/eval_coco.py --gt ... --results ...``.

Then each reports its 12 stats once more, and the largest difference from the script's is printed.

    python tools/measure_eval_speed.py [--images 5000] [--detections 50000] [--rounds 3] [--dir eval_speed]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

PLAIN = ("import sys\nfrom pycocotools.coco import COCO\nfrom pycocotools.cocoeval import COCOeval\n"
         "gt = COCO(sys.argv[1]); dt = gt.loadRes(sys.argv[2]); e = COCOeval(gt, dt, 'bbox')\n"
         "e.evaluate(); e.accumulate(); e.summarize()\n"
         "if len(sys.argv) > 3: open(sys.argv[3], 'w').write(repr([float(v) for v in e.stats]))\n")


def write_synthetic_set(folder: Path, num_images: int, num_detections: int, seed: int = 0) -> tuple[Path, Path]:
    """GT with 7 boxes an image and detections jittered around them (20% with another class)."""
    rng = random.Random(seed)
    images = [{"id": i, "width": 640, "height": 480, "file_name": f"{i:012d}.jpg"} for i in range(1, num_images + 1)]
    categories = [{"id": c, "name": f"c{c}"} for c in range(1, 81)]
    annotations, results = [], []
    for image in images:
        for _ in range(7):
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(4, 140), rng.uniform(4, 100)
            category = rng.randint(1, 80)
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(2):
                results.append({"image_id": image["id"],
                                "category_id": category if rng.random() < 0.8 else rng.randint(1, 80),
                                "bbox": [x + rng.gauss(0, 5), y + rng.gauss(0, 5), w * rng.uniform(0.8, 1.2),
                                         h * rng.uniform(0.8, 1.2)], "score": rng.random()})
    folder.mkdir(parents=True, exist_ok=True)
    gt, res = folder / "gt.json", folder / "results.json"
    gt.write_text(json.dumps({"images": images, "categories": categories, "annotations": annotations}))
    res.write_text(json.dumps(results[:num_detections]))
    return gt, res


def _stats(cmd: list[str], out: Path, plain: bool) -> list[float]:
    """The 12 COCO stats a contender reports (the plain script's, or the CLI's ``--out`` JSON)."""
    subprocess.run([*cmd, str(out)] if plain else [*cmd, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    return ast.literal_eval(out.read_text()) if plain else json.loads(out.read_text())["stats"]


def _seconds(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: prints one line a contender (median and every round) and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=50000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("eval_speed"), help="where the synthetic set is written")
    args = parser.parse_args(argv)
    gt, res = write_synthetic_set(args.dir, args.images, args.detections)
    cli = [sys.executable, "-m", "backbones_tools.eval_coco", "--gt", str(gt), "--results", str(res)]
    contenders = {"plain pycocotools script": [sys.executable, "-c", PLAIN, str(gt), str(res)],
                  "eval_coco.py --backend pycocotools": [*cli, "--backend", "pycocotools"],
                  "eval_coco.py --backend faster_coco_eval": [*cli, "--backend", "faster_coco_eval"]}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, cmd in contenders.items():
            times[name].append(_seconds(cmd))
    plain = statistics.median(times["plain pycocotools script"])
    stats = {name: _stats(cmd, args.dir / f"stats_{i}.json", plain=i == 0)
             for i, (name, cmd) in enumerate(contenders.items())}
    reference = stats["plain pycocotools script"]
    print(f"{args.images} images, {args.detections} detections, {args.rounds} rounds in turns (seconds)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<40} median {median:6.2f}  ({', '.join(f'{v:.2f}' for v in values)})  "
              f"{plain / median:.2f}x the plain script; stats within "
              f"{max(abs(a - b) for a, b in zip(stats[name], reference)):.1e} of the script's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
