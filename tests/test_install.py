"""The installed torch + torchvision pair works: torchvision's compiled ops load and run."""

import torch
import torchvision
from torchvision.ops import nms, roi_align


def test_nms_runs():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, iou_threshold=0.5).tolist() == [0, 2]


def test_roi_align_runs():
    features = torch.arange(16.0).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    out = roi_align(features, rois, output_size=(2, 2), spatial_scale=1.0, sampling_ratio=1, aligned=False)
    # Each 2x2 bin samples its centre: bilinear values at (1, 1), (1, 3), (3, 1), (3, 3).
    assert torch.allclose(out.flatten(), torch.tensor([5.0, 7.0, 13.0, 15.0]))


def _minor(version: str) -> int:
    return int(version.split("+")[0].split(".")[1])


def test_versions_are_a_matching_pair():
    # torchvision 0.N is built for torch 2.(N - 15) (0.24 <-> 2.9, 0.29 <-> 2.14), and for the same
    # build variant, recorded in the local version part (cu130, cpu, or none for the default).
    assert _minor(torchvision.__version__) - 15 == _minor(torch.__version__), (torch.__version__,
                                                                               torchvision.__version__)
    tv_local = torchvision.__version__.partition("+")[2]
    torch_local = torch.__version__.partition("+")[2]
    assert tv_local == torch_local, (torch.__version__, torchvision.__version__)
