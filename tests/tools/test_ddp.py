"""Real two-process gloo run: predictions gathered with duplicates dropped, confusion summed."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from backbones_tools.evaluation import CocoEvaluator, SegmentationMetrics

        gt = {"images": [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 40} for i in (1, 2, 3)],
              "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 10, 10],
                               "area": 100.0, "iscrowd": 0} for i in (1, 2, 3)],
              "categories": [{"id": 1, "name": "x"}]}
        hit = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]),
               "labels": torch.tensor([1])}
        miss = {**hit, "boxes": torch.tensor([[20.0, 20.0, 30.0, 30.0]])}
        ev = CocoEvaluator(gt)
        # rank 0 sees images 1, 2; rank 1 sees 3 and a padded duplicate of 1 (scored as a miss)
        ev.update({1: hit, 2: hit} if rank == 0 else {3: hit, 1: miss})
        stats = ev.evaluate()["bbox"].stats
        seg = SegmentationMetrics(2)
        seg.update(torch.tensor([rank, 1]), torch.tensor([0, 1]))
        seg.all_reduce()
        queue.put((rank, stats[0], ev.num_duplicates, seg.confusion.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_gather_and_reduce():
    ctx = mp.get_context("fork")  # children reuse the imported modules: fast start
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for rank, ap, dups, confusion in results:
        assert ap == pytest.approx(1.0)  # rank 1's duplicate "miss" of image 1 was dropped
        assert dups == 1
        assert confusion == [[1, 1], [0, 2]]
