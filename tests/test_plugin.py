"""The pytest plugin end to end, in fresh pytest processes (pytester)."""

import json
import shutil
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_CONFTEST = 'pytest_plugins = ["bnconform.plugin"]\n'


@pytest.fixture
def project(pytester, monkeypatch):
    """A scratch project: the plugin, two real catalogue files, no built-in adapters."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BNCONFORM_ENV", "scratch")
    pytester.makeconftest(PLUGIN_CONFTEST)
    (pytester.path / "cases").mkdir()
    for name in ("training.yaml", "gradients.yaml"):
        shutil.copy(ROOT / "cases" / name, pytester.path / "cases" / name)
    return pytester


def records(path: Path) -> list[dict]:
    """The cell records of a shard (without its run manifest lines)."""
    return [d for d in map(json.loads, path.read_text().splitlines()) if "kind" not in d]


def manifest(path: Path) -> dict[str, dict]:
    """The run manifest lines of a shard by kind (run_start, collected, run_end)."""
    return {d["kind"]: d for d in map(json.loads, path.read_text().splitlines()) if "kind" in d}


def comparable(recs):
    drop = {"duration_s", "timestamp"}
    return sorted((json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True) for r in recs))


def test_plugin_adapter_runs_the_catalogue_and_writes_records(project):
    result = project.runpytest_subprocess("--adapter", "tests.numpy_bn:NumpyBatchNorm", "--results-dir", "res")
    recs = records(project.path / "res" / "scratch.jsonl")
    n_cases = len(recs)
    assert n_cases >= 10
    result.assert_outcomes(passed=n_cases)
    assert {r["verdict"] for r in recs} == {"conforms"}
    assert all(r["env"] == "scratch" and r["nodeid"].startswith("cases/") for r in recs)
    result.stdout.fnmatch_lines(["*bnconform verdicts*", f"*conforms {n_cases}*"])


def test_xdist_gives_the_same_records(project):
    args = ("--adapter", "tests.numpy_bn:NumpyBatchNorm", "--adapter", "tests.numpy_bn:MutantEpsOutsideSqrt")
    project.runpytest_subprocess(*args, "--results-dir", "serial")
    project.runpytest_subprocess(*args, "--results-dir", "parallel", "-n", "2")
    serial = records(project.path / "serial" / "scratch.jsonl")
    parallel = records(project.path / "parallel" / "scratch.jsonl")
    assert len(serial) == len(parallel) > 0
    assert comparable(serial) == comparable(parallel)


def test_mutant_fails_the_run_with_a_readable_message(project):
    result = project.runpytest_subprocess("--adapter", "tests.numpy_bn:MutantMomentumFlipped", "--results-dir", "res")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*cases/training.yaml::train-1step-m0.1 on tests.numpy_bn:MutantMomentumFlipped*",
                                 "*fails: differs from the canonical oracle*running_mean*"])
    assert "fails" in {r["verdict"] for r in records(project.path / "res" / "scratch.jsonl")}


def test_raising_plugin_is_error_and_the_matrix_completes(project):
    result = project.runpytest_subprocess("--adapter", "tests.numpy_bn:RaisingAdapter",
                                          "--adapter", "tests.numpy_bn:NumpyBatchNorm", "--results-dir", "res")
    recs = records(project.path / "res" / "scratch.jsonl")
    assert {(r["adapter"], r["verdict"]) for r in recs} == {("plugin: raises", "error"), ("numpy-reference", "conforms")}
    assert result.ret == 1


def test_adapter_unavailable_here_skips_with_its_reason_unless_the_device_is_required(project):
    args = ("--adapter", "tests.numpy_bn:NoDeviceAdapter", "-rs", "--results-dir", "res")
    skipped = project.runpytest_subprocess(*args)
    assert skipped.ret == 0 and skipped.parseoutcomes()["skipped"] >= 10
    skipped.stdout.fnmatch_lines(["*SKIPPED*plugin: needs a device: no NPU on this machine*"])
    required = project.runpytest_subprocess(*args, "--require-device")
    assert required.ret == 1 and "passed" not in required.parseoutcomes()
    required.stdout.fnmatch_lines(["*cannot run here (--require-device): no NPU on this machine*"])


def test_broken_adapter_target_fails_loudly(project):
    result = project.runpytest_subprocess("--adapter", "tests.numpy_bn:DoesNotExist")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*failed to load*DoesNotExist*"])


def test_required_framework_that_is_missing_fails_every_cell(project):
    (project.path / "adapters").mkdir()
    (project.path / "adapters" / "__init__.py").write_text(
        'BUILTIN = {"ghost.BatchNorm": ("adapters.ghost:Ghost", "ghost_framework_not_installed")}\n')
    gated = project.runpytest_subprocess("--framework", "ghost_framework_not_installed")
    assert gated.ret == 1
    gated.stdout.fnmatch_lines(["*framework ghost_framework_not_installed failed to load*"])
    assert "passed" not in gated.parseoutcomes()
    ungated = project.runpytest_subprocess()
    ungated.stdout.fnmatch_lines(["*frameworks NOT installed here*", "*ghost_framework_not_installed: ghost.BatchNorm*"])
    assert ungated.ret == 5  # nothing ran: pytest's "no tests" exit code, never a silent pass
    unknown = project.runpytest_subprocess("--framework", "tensorflw")
    assert unknown.ret == 4 and "no built-in adapter uses it" in unknown.stderr.str()


def test_invalid_case_is_a_collection_error_naming_file_case_field(project):
    (project.path / "cases" / "broken.yaml").write_text(
        "theme: t\ncases:\n  - id: broken-one\n    title: x\n    behaviour: x\n    source: [{title: s}]\n"
        "    layer: {num_features: 2, momentum: 7}\n    input: {shape: [2, 2]}\n    steps: [{op: forward, mode: train}]\n")
    result = project.runpytest_subprocess("--adapter", "tests.numpy_bn:NumpyBatchNorm", "--results-dir", "res")
    result.stdout.fnmatch_lines(["*cases/broken.yaml: case 'broken-one': field 'layer.momentum'*"])
    assert result.ret == 2  # collection error interrupts the gate
    only_good = project.runpytest_subprocess("cases/training.yaml", "--adapter", "tests.numpy_bn:NumpyBatchNorm")
    assert only_good.ret == 0  # valid files still run when asked for


def _by_case(recs):
    return {r["case_id"]: r for r in recs}


def test_crashing_framework_is_an_error_cell_and_other_results_are_kept(project):
    result = project.runpytest_subprocess("--adapter", "tests.numpy_bn:AbortingAdapter", "-n", "2",
                                          "--results-dir", "res", "-p", "no:faulthandler")
    assert result.ret == 1
    recs = _by_case(records(project.path / "res" / "scratch.jsonl"))
    crashed = recs.pop("train-1step-m0.5")
    assert crashed["verdict"] == "error" and "crashed" in crashed["reason"]
    assert crashed["adapter"] == "plugin: aborts"
    assert len(recs) >= 10 and {r["verdict"] for r in recs.values()} == {"conforms"}


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_hanging_framework_times_out_as_an_error_cell(project, method):
    # 10 s: far above a NumPy cell's cost even on a loaded 2-core machine (with 3 s, a restarted worker's
    # first cell, which loads the adapter, once timed out too under heavy contention).
    args = ["--adapter", "tests.numpy_bn:HangingAdapter", "--results-dir", "res", "--timeout", "10",
            "--timeout-method", method]
    if method == "thread":  # the thread method kills the process: xdist restarts the worker
        args += ["-n", "2"]
    result = project.runpytest_subprocess(*args)
    assert result.ret == 1
    recs = _by_case(records(project.path / "res" / "scratch.jsonl"))
    hung = recs.pop("train-1step-m0.5")
    assert hung["verdict"] == "error" and hung["reason"].startswith("timed out") and "crashed" not in hung["reason"]
    assert len(recs) >= 10 and {r["verdict"] for r in recs.values()} == {"conforms"}


@pytest.mark.parametrize("workers, preset, expected", [(2, None, "cpus//2"), (None, None, None), (2, "3", "3")])
def test_xdist_workers_share_the_cores_unless_threads_are_set(monkeypatch, workers, preset, expected):
    import os
    from types import SimpleNamespace

    from bnconform.plugin import _share_cores_between_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
        if preset:
            monkeypatch.setenv(var, preset)
    _share_cores_between_workers(SimpleNamespace(option=SimpleNamespace(numprocesses=workers)))
    want = {"cpus//2": "8"}.get(expected, expected)
    assert os.environ.get("OMP_NUM_THREADS") == want and os.environ.get("MKL_NUM_THREADS") == want
