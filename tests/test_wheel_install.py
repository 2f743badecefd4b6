"""A non-editable install works outside the clone.

The wheel is built from a copy of the repository and installed (not editable) into a fresh virtual
environment. Its dependencies (torch, torchvision, ...) are the ones of the running environment,
made visible through a ``.pth`` line instead of being downloaded again: what is under test is this
package's wheel, not pip's resolver. Everything then runs from a folder outside the clone that holds
the user's own ``tools`` package, which must stay the ``tools`` Python imports there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIS = ["train-det", "train-seg", "eval-coco", "predict", "export", "convert-weights", "check-dataset",
        "analyze", "benchmark", "make-shapes", "visualize"]
TINY_RUN = [
    "--set", "data.generate_shapes=true", "--set", "data.root=shapes",
    *(f"--set=data.shapes.{k}={v}" for k, v in dict(num_train=6, num_val=2, seed=3, image_size=64,
                                                    min_object_size=8.0, max_object_size=24.0,
                                                    max_objects=2).items()),
    "--set", "data.batch_size=2", "--set", "data.num_workers=0", "--set", "data.det_aug.min_sizes=[64]",
    "--set", "data.det_aug.max_size=80", "--set", "model.fpn.out_channels=16", "--set", "model.box_head_dim=32",
    "--set", "model.options.min_size=64", "--set", "model.options.max_size=80", "--set", "train.max_iters=3",
    "--set", "train.log_every=1", "--set", "train.num_threads=1", "--set", "train.amp=none", "--set", "eval.visualize=0",
]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _not_sources(folder: str, names: list[str]) -> set[str]:
    """What the copy of the clone leaves out: outputs and environments at the top, caches anywhere."""
    top = {".git", "runs", "data", "build", "dist", "bench_results"} if Path(folder) == REPO else set()
    return {n for n in names if n in top or n.startswith(".venv") or n.endswith(".egg-info")
            or n in ("__pycache__", ".pytest_cache")}


@pytest.fixture(scope="module")
def installed(module_tmp) -> tuple[Path, Path, dict[str, str]]:
    """(venv python, the user's project folder, the environment to run in)."""
    tmp = module_tmp("wheel")
    source = tmp / "source"
    shutil.copytree(REPO, source, ignore=_not_sources)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(source)], tmp, env)
    wheel = next((tmp / "dist").glob("resnet_family_backbones-*.whl"))

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp, env).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_shared_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], tmp, env)

    project = tmp / "user_project"
    (project / "tools").mkdir(parents=True)
    (project / "tools" / "__init__.py").write_text("MINE = True\n")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return python, project, env


def test_the_wheel_holds_the_packages_and_the_configs(installed) -> None:
    python, project, env = installed
    code = ("import json, backbones, heads, backbones_tools, tools\n"
            "from backbones_tools.config.shipped import shipped_configs_dir\n"
            "print(json.dumps({'backbones': backbones.__file__, 'heads': heads.__file__, "
            "'tools': tools.__file__, 'mine': getattr(tools, 'MINE', False), "
            "'configs': str(shipped_configs_dir()), "
            "'demo': (shipped_configs_dir() / 'det' / 'demo_shapes_faster_rcnn_r18.yaml').is_file()}))")
    seen = json.loads(_run([str(python), "-c", code], project, env).stdout)
    venv = python.parents[1]
    for name in ("backbones", "heads", "configs"):
        assert Path(seen[name]).is_relative_to(venv), f"{name} comes from {seen[name]}, not the installed wheel"
    assert seen["mine"] and Path(seen["tools"]) == project / "tools" / "__init__.py"
    assert seen["demo"]


def test_every_cli_answers_help_from_anywhere(installed) -> None:
    python, project, env = installed
    for name in CLIS:
        out = _run([f"backbones-{name}", "--help"], project, env).stdout
        assert out.startswith("usage:"), (name, out[:200])
    assert "usage:" in _run([str(python), "-m", "backbones_tools.train_det", "--help"], project, env).stdout


def test_a_short_training_run_writes_beside_the_user(installed) -> None:
    python, project, env = installed
    _run(["backbones-train-det", "--config", "det/demo_shapes_faster_rcnn_r18.yaml", *TINY_RUN], project,
         {**env, "OMP_NUM_THREADS": "1"})
    run = project / "runs" / "det" / "demo_shapes_faster_rcnn_r18"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_iter"] for r in lines if r.get("type") == "train"][-1] == 3
    assert (run / "last.pth").is_file() and (project / "shapes" / "annotations").is_dir()
    written = [p for p in python.parents[1].rglob("*") if p.name in ("runs", "shapes")]
    assert not written, f"the run wrote inside the environment: {written}"
    # the user's package is still the one found, after the package's own modules were imported
    code = "import backbones_tools.engine.trainer, tools; print(tools.MINE)"
    assert _run([str(python), "-c", code], project, env).stdout.strip() == "True"
