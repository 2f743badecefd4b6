"""Generate the synthetic COCO-format shapes dataset (cached: reruns with the same parameters
return at once).

    python tools/make_shapes.py --root data/shapes [--num-train 3000] [--num-val 120] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time

if __package__ in (None, ""):  # run as a file (python tools/x.py): tools/ itself must not shadow
    sys.path.pop(0)            # top-level modules; the package is imported as backbones_tools

from backbones_tools.data.shapes import ShapesParams, make_shapes_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    defaults = ShapesParams()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--image-format", choices=["jpg", "png"], default=defaults.image_format)
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ds = make_shapes_dataset(args.root, args.num_train, args.num_val, args.seed, force=args.force,
                             image_size=args.image_size, image_format=args.image_format)
    print(f"shapes dataset ready at {ds.root} ({time.perf_counter() - start:.1f}s): "
          f"{ds.train_annotations}, {ds.val_annotations}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
