"""tools/check_dataset.py and backbones_tools.data.checks: a clean shapes dataset passes; every planted
fault is reported in its own group, naming the right annotation id or image file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from backbones_tools import check_dataset
from backbones_tools.data.checks import decode_rle_strings, inspect_image
from backbones_tools.data.shapes import make_shapes_dataset
from PIL import Image
from pycocotools import mask as mask_utils

REPO = Path(__file__).resolve().parents[2]
SHAPES = dict(num_train=8, num_val=4, seed=3, image_size=64, min_object_size=8.0,
              max_object_size=24.0, max_objects=3)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def clean_root(module_tmp) -> Path:
    root = module_tmp("clean_shapes")
    make_shapes_dataset(root, **SHAPES)
    return root


@pytest.fixture()
def root(clean_root: Path, tmp_path: Path) -> Path:
    """A private copy of the clean dataset to plant a fault in."""
    return Path(shutil.copytree(clean_root, tmp_path / "ds"))


def _ann_file(root: Path) -> Path:
    return root / "annotations" / "instances_train2017.json"


def _load(root: Path) -> dict[str, Any]:
    return json.loads(_ann_file(root).read_text())


def _save(root: Path, data: dict[str, Any]) -> None:
    _ann_file(root).write_text(json.dumps(data))  # NaN is written as NaN, as a buggy exporter would


def _run(root: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = root.parent / "report.json"
    rc = check_dataset.main(["--data-root", str(root), "--json", str(out), "--workers", "2", *extra])
    return rc, json.loads(out.read_text())


def _finding(report: dict[str, Any], code: str, split: str = "train2017") -> dict[str, Any]:
    (rep,) = [s for s in report["splits"] if s["split"] == split]
    found = {f["code"]: f for f in rep["findings"]}
    assert code in found, f"{code} not reported; found {sorted(found)}"
    return found[code]


def _polygon_ann(data: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in data["annotations"] if isinstance(a["segmentation"], list))


def _image_of(data: dict[str, Any], ann: dict[str, Any]) -> dict[str, Any]:
    return next(i for i in data["images"] if i["id"] == ann["image_id"])


# ----------------------------------------------------------------------------- planted faults
# Each plants one fault in train2017 and returns (group, expected example fields, iou type);
# "reason" and "error" are matched as substrings.

Fault = Callable[[Path], tuple[str, dict[str, Any], str]]


def _edit_ann(change: Callable[[dict, dict], dict[str, Any]], code: str, iou: str = "bbox") -> Fault:
    def plant(root: Path) -> tuple[str, dict[str, Any], str]:
        data = _load(root)
        expected = change(data, _polygon_ann(data))
        _save(root, data)
        return code, expected, iou
    return plant


def _missing_bbox(data: dict, ann: dict) -> dict:
    del ann["bbox"]
    return {"section": "annotations", "id": ann["id"], "missing": ["bbox"]}


def _missing_width(data: dict, ann: dict) -> dict:
    img = data["images"][2]
    del img["width"]
    return {"section": "images", "id": img["id"], "missing": ["width"]}


def _duplicate_image(data: dict, ann: dict) -> dict:
    data["images"].append(dict(data["images"][1]))
    return {"id": data["images"][1]["id"]}


def _duplicate_ann(data: dict, ann: dict) -> dict:
    data["annotations"][-1]["id"] = ann["id"]
    return {"id": ann["id"]}


def _unknown_image(data: dict, ann: dict) -> dict:
    ann["image_id"] = 9999
    return {"id": ann["id"], "image_id": 9999}


def _unknown_category(data: dict, ann: dict) -> dict:
    ann["category_id"] = 77
    return {"id": ann["id"], "category_id": 77}


def _zero_height(data: dict, ann: dict) -> dict:
    ann["bbox"][3] = 0
    return {"id": ann["id"]}


def _outside(data: dict, ann: dict) -> dict:
    ann["bbox"][0] = _image_of(data, ann)["width"] + 2
    return {"id": ann["id"], "image_id": ann["image_id"]}


def _nan_bbox(data: dict, ann: dict) -> dict:
    ann["bbox"][2] = float("nan")
    return {"id": ann["id"], "field": "bbox"}


def _odd_polygon(data: dict, ann: dict) -> dict:
    ann["segmentation"][0] = ann["segmentation"][0][:-1]
    return {"id": ann["id"], "polygon": 0, "reason": "odd number"}


def _two_point_polygon(data: dict, ann: dict) -> dict:
    ann["segmentation"][0] = ann["segmentation"][0][:4]
    return {"id": ann["id"], "reason": "fewer than 3 points"}


def _polygon_outside(data: dict, ann: dict) -> dict:
    ann["segmentation"][0][0] = _image_of(data, ann)["width"] + 50.0
    return {"id": ann["id"], "reason": "outside the image"}


def _rle(ann: dict, h: int, w: int) -> dict:
    rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w))
    return {"size": [h, w], "counts": rle["counts"].decode("ascii")}


def _rle_size(data: dict, ann: dict) -> dict:
    img = _image_of(data, ann)
    ann["segmentation"] = _rle(ann, img["height"] + 1, img["width"])
    return {"id": ann["id"], "reason": "differs from the image's"}


def _rle_counts(data: dict, ann: dict) -> dict:
    img = _image_of(data, ann)
    rle = _rle(ann, img["height"], img["width"])
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"][:-1]}
    return {"id": ann["id"], "reason": "counts"}


def _malformed_json(root: Path) -> tuple[str, dict[str, Any], str]:
    _ann_file(root).write_text('{\n "images": [],\n "annotations": [oops],\n "categories": []\n}')
    return "malformed_json", {"error": "line 3, column"}, "bbox"


def _edit_file(change: Callable[[Path, dict, dict], dict[str, Any]], code: str) -> Fault:
    def plant(root: Path) -> tuple[str, dict[str, Any], str]:
        data = _load(root)
        img = data["images"][3]
        expected = change(root / "train2017" / img["file_name"], img, data)
        _save(root, data)
        return code, {"id": img["id"], "file_name": img["file_name"], **expected}, "bbox"
    return plant


def _delete(path: Path, img: dict, data: dict) -> dict:
    path.unlink()
    return {}


def _cut_in_half(path: Path, img: dict, data: dict) -> dict:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return {}


def _png_cut_in_half(path: Path, img: dict, data: dict) -> dict:
    png = path.with_suffix(".png")
    Image.open(path).save(png, format="PNG")
    path.unlink()
    img["file_name"] = png.name
    return _cut_in_half(png, img, data)


def _wrong_size(path: Path, img: dict, data: dict) -> dict:
    Image.new("RGB", (img["width"] + 8, img["height"]), (90, 20, 200)).save(path, format="JPEG")
    return {"size": [img["width"] + 8, img["height"]], "expected": [img["width"], img["height"]]}


def _not_an_image(path: Path, img: dict, data: dict) -> dict:
    path.write_bytes(b"this is not an image\n" * 10)
    return {}


FAULTS: dict[str, Fault] = {
    "malformed_json": _malformed_json,
    "missing_bbox": _edit_ann(_missing_bbox, "missing_field"),
    "missing_width": _edit_ann(_missing_width, "missing_field"),
    "duplicate_image_id": _edit_ann(_duplicate_image, "duplicate_image_id"),
    "duplicate_annotation_id": _edit_ann(_duplicate_ann, "duplicate_annotation_id"),
    "unknown_image_id": _edit_ann(_unknown_image, "unknown_image_id"),
    "unknown_category_id": _edit_ann(_unknown_category, "unknown_category_id"),
    "zero_height_box": _edit_ann(_zero_height, "non_positive_box"),
    "box_outside_image": _edit_ann(_outside, "box_outside_image"),
    "nan_in_bbox": _edit_ann(_nan_bbox, "non_finite"),
    "odd_polygon": _edit_ann(_odd_polygon, "invalid_polygon", "segm"),
    "two_point_polygon": _edit_ann(_two_point_polygon, "invalid_polygon", "segm"),
    "polygon_outside_image": _edit_ann(_polygon_outside, "invalid_polygon", "segm"),
    "rle_size_mismatch": _edit_ann(_rle_size, "invalid_rle", "segm"),
    "rle_bad_counts": _edit_ann(_rle_counts, "invalid_rle", "segm"),
    "missing_image_file": _edit_file(_delete, "missing_image_file"),
    "truncated_jpeg": _edit_file(_cut_in_half, "truncated_image"),
    "truncated_png": _edit_file(_png_cut_in_half, "truncated_image"),
    "wrong_image_size": _edit_file(_wrong_size, "image_size_mismatch"),
    "unreadable_image": _edit_file(_not_an_image, "unreadable_image"),
}


def _matches(example: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(v in example.get(k, "") if k in ("reason", "error") else example.get(k) == v
               for k, v in expected.items())


@pytest.mark.parametrize("fault", list(FAULTS))
def test_planted_fault_is_reported_in_its_group(root: Path, fault: str) -> None:
    code, expected, iou_type = FAULTS[fault](root)
    rc, report = _run(root, "--iou-type", iou_type)
    assert rc == 1 and not report["ok"]
    found = _finding(report, code)
    assert found["severity"] == "error" and found["count"] >= 1
    assert any(_matches(e, expected) for e in found["examples"]), (expected, found["examples"])
    assert [s["ok"] for s in report["splits"] if s["split"] == "val2017"] == [True]


# ----------------------------------------------------------------------------- clean and warnings


def test_clean_dataset_passes(clean_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.json"
    for mode in ([], ["--full"]):
        assert check_dataset.main(["--data-root", str(clean_root), "--iou-type", "segm",
                                   "--json", str(out), *mode]) == 0
        report = json.loads(out.read_text())
        assert [s["split"] for s in report["splits"]] == ["train2017", "val2017"]
        for rep in report["splits"]:
            assert rep["num_errors"] == 0 and rep["num_warnings"] == 0, rep["findings"]
            assert rep["num_images"] == SHAPES[f"num_{rep['split'][:-4]}"]
            plain = rep["num_annotations"] - rep["num_crowd"]
            assert sum(rep["area_histogram"].values()) == plain
            assert sum(c["annotations"] for c in rep["categories"]) == plain
            assert all(sum(c["sizes"].values()) == c["annotations"] for c in rep["categories"])
            assert [c["name"] for c in rep["categories"]] == ["circle", "triangle", "rectangle", "star"]
    text = capsys.readouterr().out
    assert "RESULT: OK" in text and "circle(1)=" in text and "object sizes" in text


def test_image_without_annotations_is_only_a_warning(root: Path) -> None:
    data = _load(root)
    img = data["images"][5]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != img["id"]]
    _save(root, data)
    rc, report = _run(root)
    found = _finding(report, "image_without_annotations")
    assert rc == 0 and report["ok"] and found["severity"] == "warning"
    assert found["examples"] == [{"id": img["id"], "file_name": img["file_name"]}]


def test_segmentation_problems_are_warnings_for_bbox(root: Path) -> None:
    FAULTS["odd_polygon"](root)
    rc, report = _run(root, "--iou-type", "bbox")
    assert rc == 0 and _finding(report, "invalid_polygon")["severity"] == "warning"
    rc, _ = _run(root, "--iou-type", "segm")
    assert rc == 1


def test_full_decode_reports_truncation(root: Path) -> None:
    code, expected, _ = FAULTS["truncated_jpeg"](root)
    rc, report = _run(root, "--full")
    assert rc == 1 and _matches(_finding(report, code)["examples"][0], expected)


def test_data_after_the_jpeg_end_marker_is_not_truncation(clean_root: Path, tmp_path: Path) -> None:
    src = sorted((clean_root / "train2017").iterdir())[0]
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(src.read_bytes() + bytes(range(256)) * 40)  # 10 KiB after FF D9
    assert inspect_image(padded).status == "ok"
    assert inspect_image(padded).size == Image.open(src).size
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(src.read_bytes()[:-200])
    assert inspect_image(cut).status == "truncated_image"
    assert inspect_image(tmp_path / "absent.jpg").status == "missing_image_file"


def test_rle_string_decoder_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    strings, expected = [], []
    for _ in range(60):
        counts = rng.integers(0, 10 ** int(rng.integers(1, 7)), size=int(rng.integers(1, 30))).tolist()
        total = max(sum(counts), 1)
        rle = mask_utils.frPyObjects({"size": [1, total], "counts": counts}, 1, total)
        strings.append(rle["counts"].decode("ascii"))
        expected.append(counts)
    bad = ["~~", "1" + chr(48 + 0x20), "é1"]  # char out of range, unterminated, not ASCII
    counts, owner, malformed = decode_rle_strings(strings + bad)
    assert malformed.tolist() == [False] * len(strings) + [True] * len(bad)
    for i, want in enumerate(expected):
        assert counts[owner == i].tolist() == want


# ----------------------------------------------------------------------------- usage


def test_usage_errors_exit_2_without_traceback(clean_root: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    assert check_dataset.main(["--data-root", str(tmp_path / "nope")]) == 2
    assert check_dataset.main(["--data-root", str(clean_root), "--split", "test2017"]) == 2
    assert check_dataset.main(["--data-root", str(clean_root), "--iou-type", "keypoints"]) == 2
    assert check_dataset.main([]) == 2
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    assert "does not exist" in text and "instances_test2017.json" in text and "keypoints" in text
    assert check_dataset.main(["--help"]) == 0
    assert "example:" in capsys.readouterr().out


def test_runs_as_a_script(clean_root: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "tools/check_dataset.py", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    ok = run("--data-root", str(clean_root), "--split", "val2017")
    assert ok.returncode == 0, ok.stderr
    assert "RESULT: OK" in ok.stdout
    bad = run("--data-root", str(tmp_path / "missing"))
    assert bad.returncode == 2 and "error:" in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
