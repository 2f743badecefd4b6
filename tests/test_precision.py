"""``train.amp: auto`` / ``train.channels_last: auto``: the decision from the machine's
capabilities (patched, so both kinds of CPU are covered on either), and what a run records."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from backbones_tools.engine import precision as P

CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16."""

    def set_native(value: bool) -> None:
        flags = ("avx2", "avx512f", "avx512_bf16") if value else ("avx2", "fma")
        monkeypatch.setattr(P, "cpu_flags", lambda: flags)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    return set_native


def test_auto_is_fp32_nchw_without_native_bf16(native_bf16) -> None:
    native_bf16(False)
    p = P.choose_precision("auto", "auto", CPU)
    assert (p.amp, p.channels_last) == ("none", False)
    assert "no native bf16" in p.reason
    assert p.record()["cpu_flags"] == ["avx2", "fma"]


def test_auto_is_bf16_channels_last_with_native_bf16(native_bf16) -> None:
    native_bf16(True)
    p = P.choose_precision("auto", "auto", CPU)
    assert (p.amp, p.channels_last) == ("bf16", True)
    assert "avx512_bf16" in p.reason and "avx512_bf16" in p.record()["cpu_flags"]


def test_onednn_isa_cap_turns_native_bf16_off(native_bf16, monkeypatch) -> None:
    native_bf16(True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not P.cpu_has_native_bf16()
    assert P.choose_precision("auto", "auto", CPU).amp == "none"


def test_explicit_settings_win_and_emulated_bf16_warns(native_bf16, caplog) -> None:
    native_bf16(False)
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        p = P.choose_precision("bf16", False, CPU)
    assert (p.amp, p.channels_last) == ("bf16", False)
    assert "emulates" in caplog.text and "10x slower" in caplog.text
    assert P.choose_precision("none", True, CPU).channels_last is True
    with caplog.at_level(logging.WARNING, logger=P.__name__):
        assert P.choose_precision("fp16", "auto", CPU).amp == "none"  # no fp16 autocast on a CPU
    assert "needs CUDA" in caplog.text


def test_cuda_auto_picks_bf16_or_fp16(monkeypatch) -> None:
    monkeypatch.setattr(P, "_cuda_name", lambda device: "Some GPU")
    cuda = torch.device("cuda", 0)
    asked: list[torch.device] = []
    capability = {"value": (8, 0)}

    def get_device_capability(device):
        asked.append(device)
        return capability["value"]

    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # true when emulated too
    p = P.choose_precision("auto", "auto", cuda)
    assert (p.amp, p.channels_last, p.record()["device_name"]) == ("bf16", True, "Some GPU")
    assert "cpu_flags" not in p.record() and asked == [cuda]
    capability["value"] = (7, 0)  # V100 / T4: bf16 emulated, fp16 with a grad scaler instead
    assert P.choose_precision("auto", "auto", cuda).amp == "fp16"


def test_real_cpu_flags_are_read() -> None:
    flags = P.cpu_flags()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        listed = {f for line in cpuinfo.read_text().splitlines()
                  if line.split(":")[0].strip().lower() in ("flags", "features") for f in line.split(":", 1)[1].split()}
        assert flags == tuple(f for f in P.RELEVANT_CPU_FLAGS if f in listed)
    assert set(flags) <= set(P.RELEVANT_CPU_FLAGS)
    if "avx512_bf16" in flags and not P.onednn_isa_cap():
        assert P.cpu_has_native_bf16()
