"""``keep_freed_memory``: freed CPU memory is reused instead of faulted in again (glibc only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backbones.cpu_memory import _glibc

# Allocates and frees a 64 MiB tensor (above glibc's largest mmap threshold) eight times, with or
# without keep_freed_memory(), and prints the page faults of each round.
PROBE = """
import json, resource, sys, torch
from backbones import keep_freed_memory
from backbones.cpu_memory import freed_memory_kept
assert not freed_memory_kept()
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
assert freed_memory_kept() == applied
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 << 20).fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    pages = (64 << 20) // 4096
    assert min(default["faults"]) > pages // 2, default  # every round faults its 16k pages in again
    # the heap takes a round or two to reach its steady size, then the same pages are reused
    assert kept["applied"] and max(kept["faults"][-4:]) < pages // 20, kept


def test_off_glibc_it_does_nothing(monkeypatch: pytest.MonkeyPatch):
    import backbones.cpu_memory as cpu_memory

    monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
    assert cpu_memory.keep_freed_memory() is False
