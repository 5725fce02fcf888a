"""Issue 22's acceptance: the suite used without the repository.

Builds the sdist and, from it, the wheel (``python -m build``), installs the wheel with the ``torch`` extra into
a fresh venv (``uv venv`` / ``uv pip install``, as tox-uv builds the envs; ``torch==2.13.0`` is the
local CPU wheel through ``UV_FIND_LINKS``), and from an empty temporary directory runs ``bnconform run --framework
torch``, ``bnconform cases`` and plain ``pytest --framework torch`` (the pytest11 entry point).

Slow (minutes, mostly the install): run by the tox env ``install`` only (the selftest env ignores this module).
Nothing here skips: without ``build`` or a framework wheel the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bnconform.catalogue import load_catalogue

ROOT = Path(__file__).resolve().parents[1]
TORCH_CELLS = 305  # 61 cases x 5 torch rows


def sh(*cmd, cwd: Path, timeout: float = 3600) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` outside this env (no PYTHONPATH, tox env name or suite commit of this run): only
    the venv's install counts."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "BNCONFORM_ENV", "BNCONFORM_COMMIT", "VIRTUAL_ENV")}
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    proc = sh(sys.executable, "-m", "build", "--outdir", out, ROOT, cwd=out, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    """A fresh venv with ``bnconform[torch]`` installed from the wheel: its ``bin/`` directory.

    Created and installed by uv (``python -m uv``, a dependency of the ``install`` env), as the tox envs are:
    pip took 4-14 minutes for the same install here, uv seconds. uv reads no pip configuration;
    ``UV_FIND_LINKS`` (set by tox.ini from ``PIP_FIND_LINKS``) keeps ``torch==2.13.0`` the local CPU wheel.
    """
    where = tmp_path_factory.mktemp("venv") / "v"
    proc = sh(sys.executable, "-m", "uv", "venv", "--python", sys.executable, where, cwd=where.parent)
    assert proc.returncode == 0, proc.stderr
    bin_dir = where / "bin"
    proc = sh(sys.executable, "-m", "uv", "pip", "install", "--python", bin_dir / "python",
              f"{dist['wheel']}[torch]", cwd=where.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield bin_dir
    shutil.rmtree(where, ignore_errors=True)  # a torch venv is about 1 GB


def test_the_wheel_carries_the_catalogue_inside_the_package_and_the_entry_points(dist):
    names = set(zipfile.ZipFile(dist["wheel"]).namelist())
    for top in ("cases", "expectations", "adapters"):
        repo = {p.relative_to(ROOT).as_posix() for p in (ROOT / top).iterdir()
                if p.is_file() and p.suffix in (".yaml", ".py")}
        assert repo and {f"bnconform/_builtin/{n}" for n in repo} <= names, top
    assert not {n for n in names if n.split("/")[0] in ("cases", "adapters", "expectations", "tests")}
    meta = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(dist["wheel"]).read(meta).decode()
    assert "[pytest11]\nbnconform.plugin = bnconform.plugin" in entry_points
    assert "bnconform = bnconform.cli:main" in entry_points


def test_run_from_an_empty_directory(venv, tmp_path):
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    proc = sh(venv / "bnconform", "run", "--framework", "torch", "-n", "2", cwd=empty)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-3000:]
    lines = [json.loads(ln) for ln in (empty / "reports" / "results" / "local.jsonl").read_text().splitlines()]
    records = [d for d in lines if "kind" not in d]
    assert len(records) >= TORCH_CELLS
    verdicts = [r["verdict"] for r in records]
    assert verdicts.count("fails") == 0 and verdicts.count("error") == 0, verdicts
    assert {r["framework"] for r in records} == {"torch"}
    assert {r["case_file"].split("/")[0] for r in records} == {"cases"}
    manifest = {d["kind"]: d for d in lines if "kind" in d}
    assert manifest["run_end"]["how"] == "complete" and not manifest["collected"]["partial"]
    assert manifest["run_start"]["suite_commit"].startswith("bnconform==")  # not a commit of the user's repository
    report = empty / "reports" / "parity.html"
    assert report.is_file() and report.stat().st_size > 10_000
    # The catalogue the run used is the repository's: the gate of the installed package accepts the shard.
    gate = sh(venv / "bnconform", "gate", "reports/results/local.jsonl", "--require-frameworks", "torch", cwd=empty)
    assert gate.returncode == 0, gate.stdout + gate.stderr


def test_cases_lists_the_builtin_catalogue_from_an_empty_directory(venv, tmp_path):
    proc = sh(venv / "bnconform", "cases", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    ids = [c.id for c in load_catalogue([ROOT / "cases"], ROOT).cases]
    lines = proc.stdout.splitlines()
    assert len(lines) == len(ids) and all(f" {i} " in line for i, line in zip(ids, lines))
    proc = sh(venv / "bnconform", "validate", cwd=tmp_path)
    assert proc.returncode == 0 and "0 error(s)" in proc.stdout, proc.stdout + proc.stderr


def test_plain_pytest_knows_the_plugin_in_any_directory(venv, tmp_path):
    proc = sh(venv / "pytest", "--framework", "torch", "-k", "train-1step-m0.1", "--results-dir", "res",
              "-p", "no:cacheprovider", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(ln) for ln in (tmp_path / "res" / "local.jsonl").read_text().splitlines()]
    assert {r["case_id"] for r in records if "kind" not in r} == {"train-1step-m0.1"}
    # No top-level package of the catalogue is installed: a user's own `adapters` or `cases` cannot collide.
    proc = sh(venv / "python", "-c", "import adapters", cwd=tmp_path)
    assert proc.returncode != 0 and "No module named 'adapters'" in proc.stderr
