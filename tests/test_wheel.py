"""The wheel works outside the checkout: built, installed into a fresh venv, demo run."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd, env=None, timeout=900):
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_the_wheel_runs_its_demo_from_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    # The build backend is in the test environment (hatchling): no download, no isolation.
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            dist,
            ROOT,
        ],
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("armed_bio-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "armed_bio/datasets/_data/cellbench_lung5_hvg2k.h5ad" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "data/"))]

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], cwd=tmp_path)
    # The dependencies (torch, scvi-tools, ...: gigabytes) come from the test environment's
    # site-packages, appended after the fresh venv's own; armed_bio itself only from the wheel
    # (the test environment's editable install is a .pth file, not processed this way).
    purelib = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    deps = [p for p in site.getsitepackages() if Path(p).exists()]
    deps.append(sysconfig.get_paths()["purelib"])
    (purelib / "zz_test_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    found = _run([python, "-c", "import armed_bio; print(armed_bio.__file__)"], outside, env)
    assert Path(found.stdout.strip()).is_relative_to(venv), found.stdout
    demo = _run(
        [venv / "bin" / "armed-bio", "demo", "--max-epochs", "2", "--threads", "1"], outside, env
    )
    assert "data: CellBench lung5, 1021 cells x 2000 genes" in demo.stdout
    assert "trained 2 epochs" in demo.stdout
    out = outside / "demo_output"
    assert (out / "cellbench_armed.h5ad").stat().st_size > 0
    assert (out / "umap.png").stat().st_size > 10_000
