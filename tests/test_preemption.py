"""Stopping safely: SIGTERM mid-epoch writes a resumable checkpoint at the current iteration,
``--resume auto`` continues without repeating or losing an iteration (one process and torchrun),
and users' mistakes end the CLIs with a message and exit code 2, not a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from backbones_tools.data import make_shapes_dataset
from backbones_tools.engine import load_checkpoint
from backbones_tools.engine.cli import main as cli_main
from backbones_tools.engine.metrics import read_jsonl
from backbones_tools.engine.preemption import PREEMPTED_EXIT_CODE, StopSignals

from tests.test_train_det import DEMO, SHAPES, env1, tiny_overrides

REPO = Path(__file__).resolve().parents[1]
TRAIN_DET = str(REPO / "tools" / "train_det.py")


@pytest.fixture(scope="module")
def shapes_root(module_tmp) -> Path:
    root = module_tmp("shapes_stop")
    make_shapes_dataset(root, **SHAPES)
    return root


def _sets(root: Path) -> list[str]:
    overrides = tiny_overrides(root, epochs=3) + ["train.eval_every=3", "train.deterministic=true",
                                                 "train.checkpoint_every_iters=null"]
    return [a for o in overrides for a in ("--set", o)]


def _start(cmd: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([*cmd, "--output-dir", str(out)], env=env1(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _term_when(proc: subprocess.Popen, metrics: Path, epoch: int, it: int) -> None:
    """SIGTERM to the whole process group (what a scheduler does) once ``epoch``/``it`` is logged."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        rows = read_jsonl(metrics) if metrics.exists() else []
        if any(r.get("type") == "train" and r["epoch"] == epoch and r["iter"] >= it for r in rows):
            os.killpg(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.02)
    proc.wait(timeout=120)


def _assert_stopped_and_resumed_like(unbroken: Path, broken: Path) -> None:
    rows = read_jsonl(broken / "metrics.jsonl")
    stops = [r for r in rows if r["type"] == "stop"]
    assert len(stops) == 1 and stops[0]["signal"] == "SIGTERM"
    iters = [r["global_iter"] for r in rows if r["type"] == "train"]
    assert iters == list(range(1, iters[-1] + 1))  # log_every=1: none repeated, none lost
    assert [r["type"] for r in rows].count("resume") == 1
    a = load_checkpoint(unbroken / "last.pth")["model"]
    b = load_checkpoint(broken / "last.pth")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_auto_matches_an_unbroken_run(shapes_root: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, TRAIN_DET, "--config", str(DEMO), *_sets(shapes_root)]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    subprocess.run([*cmd, "--output-dir", str(unbroken)], check=True, env=env1(), timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    proc = _start(cmd, broken)
    _term_when(proc, broken / "metrics.jsonl", epoch=2, it=2)
    err = proc.stderr.read().decode()
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    stop = next(r for r in read_jsonl(broken / "metrics.jsonl") if r["type"] == "stop")
    saved = load_checkpoint(broken / "last.pth")
    assert saved["global_iter"] == stop["global_iter"] and saved["epoch"] == 1  # mid-epoch 2, this iteration
    assert 1 <= saved["iter_in_epoch"] < 4

    subprocess.run([*cmd, "--output-dir", str(broken), "--resume", "auto"], check=True, env=env1(),
                   timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _assert_stopped_and_resumed_like(unbroken, broken)


@pytest.mark.slow
def test_sigterm_under_torchrun_then_resume_auto(shapes_root: Path, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           TRAIN_DET, "--config", str(DEMO), *_sets(shapes_root)]
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    subprocess.run([*run, "--output-dir", str(unbroken)], check=True, env=env1(), timeout=400,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = _start(run, broken)
    _term_when(proc, broken / "metrics.jsonl", epoch=2, it=2)
    stop = next(r for r in read_jsonl(broken / "metrics.jsonl") if r["type"] == "stop")
    saved = load_checkpoint(broken / "last.pth")
    assert saved["global_iter"] == stop["global_iter"] and len(saved["rng"]) == 2
    subprocess.run([*run, "--output-dir", str(broken), "--resume", "auto"], check=True, env=env1(),
                   timeout=400, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _assert_stopped_and_resumed_like(unbroken, broken)


def test_resume_auto_starts_fresh_without_a_checkpoint(tmp_path: Path) -> None:
    from backbones_tools.engine.cli import resolve_resume

    assert resolve_resume("auto", tmp_path) is False
    (tmp_path / "last.pth").write_bytes(b"")
    assert resolve_resume("auto", tmp_path) is True
    assert resolve_resume("x.pth", tmp_path) == "x.pth"


def test_a_repeated_signal_within_the_window_is_one_request(monkeypatch) -> None:
    killed = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append(sig))
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN when run in the background
    with StopSignals() as stop:
        stop._handle(signal.SIGTERM, None)
        stop._handle(signal.SIGTERM, None)  # the launcher forwarding the same request
        assert stop.received == signal.SIGTERM and not killed
        stop._received_at -= 10.0
        stop._handle(signal.SIGINT, None)  # a second request later: exit at once
        assert killed == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is before  # restored, although the second request had reset it


# ----------------------------------------------------------------------------- user errors


def _cli_err(capsys, root: Path, out: Path, *extra: str) -> str:
    args = ["--config", str(DEMO), "--output-dir", str(out),
            *(f"--set={o}" for o in tiny_overrides(root, epochs=1) if not o.startswith("data.generate")),
            "--set=data.generate_shapes=false", *extra]
    assert cli_main("det", args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


def _copy(root: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(root, dst)
    return dst


def test_truncated_annotation_json_is_named_with_its_position(shapes_root: Path, tmp_path: Path, capsys) -> None:
    root = _copy(shapes_root, tmp_path / "data")
    ann = root / "annotations" / "instances_train2017.json"
    ann.write_text(ann.read_text()[:500])
    err = _cli_err(capsys, root, tmp_path / "run")
    assert str(ann) in err and "line 1" in err


def test_unknown_category_id_is_named(shapes_root: Path, tmp_path: Path, capsys) -> None:
    root = _copy(shapes_root, tmp_path / "data")
    ann = root / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["category_id"] = 99
    ann.write_text(json.dumps(data))
    err = _cli_err(capsys, root, tmp_path / "run")
    assert "99" in err and "instances_val2017.json" in err


class Opaque:
    """An object that is not a tensor: a checkpoint holding it needs full unpickling."""


def test_pickled_checkpoint_is_refused_in_our_words(shapes_root: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "pickled.pth"
    torch.save({"model": {}, "extra": Opaque()}, bad)
    err = _cli_err(capsys, shapes_root, tmp_path / "run", "--resume", str(bad))
    assert str(bad) in err and "contains code or Python objects" in err and "weights_only=False" in err
    assert "file an issue" not in err  # not torch's own text
    err = _cli_err(capsys, shapes_root, tmp_path / "run2", f"--set=model.backbone.weights={bad}")
    assert str(bad) in err and "contains code or Python objects" in err


def test_debug_shows_the_traceback_of_a_user_error(shapes_root: Path, tmp_path: Path) -> None:
    from backbones_tools.config import ConfigError

    with pytest.raises(ConfigError):
        cli_main("det", ["--config", str(DEMO), "--output-dir", str(tmp_path), "--set", "optim.lrr=1", "--debug"])


def test_a_bug_is_not_disguised_as_a_user_error(monkeypatch, tmp_path: Path) -> None:
    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("backbones_tools.engine.cli.load_config", broken)
    with pytest.raises(KeyError):
        cli_main("det", ["--output-dir", str(tmp_path)])
