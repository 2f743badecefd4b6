"""Test-wide fixtures."""

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    """``mktemp(name)`` for module-scoped fixtures; what it made is removed when the module is done.

    A tiny training run still writes full-size checkpoints (about 130 MB for the R18 demos), and the
    temp folder kept them all until the session ended: 12 GB per suite run, more than CI's disk.
    """
    made: list[Path] = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
