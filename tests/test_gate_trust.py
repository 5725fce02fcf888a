"""Issue 15: a gate you can trust. Each numbered false pass of the issue, driven
through REAL pytest and ``bnconform gate`` subprocesses with the misbehaving
plug-in adapters of ``tests/fake_adapters.py``: the gate must fail and name the
reason, and an honest complete run must still pass.
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
GOOD = "tests.numpy_bn:NumpyBatchNorm"
FAKE = "tests.fake_adapters:"


@pytest.fixture
def project(pytester, monkeypatch):
    """A scratch project: the plugin and one real catalogue file (training.yaml), no built-in adapters."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("BNCONFORM_ENV", "scratch")
    pytester.makeconftest('pytest_plugins = ["bnconform.plugin"]\n')
    (pytester.path / "cases").mkdir()
    shutil.copy(ROOT / "cases" / "training.yaml", pytester.path / "cases" / "training.yaml")
    return pytester


def run(project, *args, results="res"):
    """A pytest run of the matrix writing ``<results>/scratch.jsonl``."""
    return project.runpytest_subprocess(*args, "--results-dir", results, "-p", "no:cacheprovider")


def gate(project, *args) -> tuple[int, str]:
    """``bnconform gate ARGS`` in the project directory (so ./cases is the catalogue on disk)."""
    proc = subprocess.run([sys.executable, "-m", "bnconform.cli", "gate", *map(str, args)], cwd=project.path,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def lines(project, results="res") -> list[dict]:
    return [json.loads(ln) for ln in (project.path / results / "scratch.jsonl").read_text().splitlines()]


def records(project, results="res") -> list[dict]:
    return [d for d in lines(project, results) if "kind" not in d]


def collected(project, results="res") -> list[str]:
    return next(d for d in lines(project, results) if d.get("kind") == "collected")["cells"]


def test_honest_complete_run_passes_alone_and_against_itself(project):
    run(project, "--adapter", GOOD, results="base")
    run(project, "--adapter", GOOD, "-n", "2")
    kinds = [d.get("kind") for d in lines(project)]
    assert kinds[0] == "run_start" and kinds[1] == "collected" and kinds[-1] == "run_end"
    assert lines(project)[-1]["how"] == "complete"
    code, out = gate(project, "res", "--baseline", "base", "--require-frameworks", "numpy")
    assert code == 0, out
    assert "GATE PASSED" in out


# ------------------------------------------------------------------ 1. interrupted / killed runs

def test_1_interrupted_serial_run_fails_the_gate(project):
    result = run(project, "--adapter", FAKE + "Interrupted")
    assert result.ret == 2
    assert 0 < len(records(project)) < len(collected(project))
    code, out = gate(project, "res")
    assert code == 1 and "the run ended interrupted" in out, out
    assert "collected cell(s) have no record" in out


def test_1_sigint_under_xdist_fails_the_gate(project):
    # A terminal delivers Ctrl-C; a background job (`cmd &` in a script, CI runners) inherits SIGINT
    # *ignored*, and Python then installs no KeyboardInterrupt handler. Restore the terminal's disposition.
    project.makeconftest('import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n'
                         'pytest_plugins = ["bnconform.plugin"]\n')
    run(project, "--adapter", FAKE + "SigintController", "-n", "2")
    code, out = gate(project, "res")
    assert code == 1, out
    assert "the run ended interrupted" in out or "incomplete: the run never finished" in out, out


def test_1_aborted_serial_run_fails_the_gate(project):
    run(project, "--adapter", FAKE + "Aborts", "-p", "no:faulthandler")
    assert lines(project)[-1].get("kind") != "run_end" and records(project)  # results so far are kept
    code, out = gate(project, "res")
    assert code == 1 and "incomplete: the run never finished" in out, out


# ------------------------------------------------------------------ 2. partial selection

def test_2_k_selection_replaces_the_shard_and_fails_without_allow_partial(project):
    run(project, "--adapter", GOOD)
    full = len(records(project))
    run(project, "--adapter", GOOD, "-k", "train-1step-m0.1")
    assert len(records(project)) == 1 < full
    code, out = gate(project, "res")
    assert code == 1 and f"partial run: 1 of the {full} cells" in out and "-k 'train-1step-m0.1'" in out, out
    code, out = gate(project, "res", "--allow-partial")
    assert code == 0 and "accepted (--allow-partial)" in out, out


# ------------------------------------------------------------------ 3. runs that wrote nothing

def test_3_collection_error_never_leaves_the_old_shard_current(project):
    run(project, "--adapter", GOOD)
    assert gate(project, "res")[0] == 0
    (project.path / "cases" / "broken.yaml").write_text("theme: t\ncases: [\n")
    result = run(project, "--adapter", GOOD)
    assert result.ret == 2
    code, out = gate(project, "res", "--cases", project.path / "cases")
    assert code == 1 and "the run ended collection_error" in out and "broken.yaml" in out, out


def test_3_adapter_that_fails_to_import_replaces_the_shard_with_error_records(project):
    run(project, "--adapter", GOOD)
    run(project, "--adapter", FAKE + "DoesNotExist")
    recs = records(project)
    assert len(recs) == len(collected(project)) > 0 and {r["verdict"] for r in recs} == {"error"}
    code, out = gate(project, "res")
    assert code == 1 and "failed to load" in out, out


# ------------------------------------------------------------------ 4. problems in the baseline

def test_4_corrupt_empty_or_incomplete_baseline_fails(project):
    run(project, "--adapter", GOOD, results="base")
    run(project, "--adapter", GOOD)
    base = project.path / "base" / "scratch.jsonl"
    text = base.read_text().splitlines()
    # A truncated line hides a record of the baseline.
    base.write_text("\n".join(text[:3] + [text[3][:40]] + text[4:]) + "\n")
    code, out = gate(project, "res", "--baseline", "base")
    assert code == 1 and "baseline: unreadable result line" in out and "baseline: " in out, out
    # The baseline run never finished.
    base.write_text("\n".join(text[:-1]) + "\n")
    code, out = gate(project, "res", "--baseline", "base")
    assert code == 1 and "baseline: " in out and "incomplete: the run never finished" in out, out
    (project.path / "empty").mkdir()
    code, out = gate(project, "res", "--baseline", "empty")
    assert code == 1 and "baseline: no result cells at all" in out, out


# ------------------------------------------------------------------ 5 and 10. nothing measured

def test_5_10_unavailable_adapter_gets_records_and_a_vacuous_run_fails(project):
    result = run(project, "--adapter", FAKE + "NotHere")
    assert result.ret == 0  # skipped cells (ungated env), but each has its record
    recs = records(project)
    assert len(recs) == len(collected(project)) > 0
    assert {r["verdict"] for r in recs} == {"unsupported"}
    assert all("not available on this machine: no such device" in r["reason"] for r in recs)
    code, out = gate(project, "res")
    assert code == 1 and "no value was compared in any cell" in out, out
    # Next to a shard that did measure something, the vacuous one still fails.
    run(project, "--adapter", GOOD, results="good")
    code, out = gate(project, "good", "res")
    assert code == 1 and "this run measured nothing" in out, out
    run(project, "--adapter", FAKE + "NotHere", "--require-device")
    assert {r["verdict"] for r in records(project)} == {"error"}
    assert gate(project, "res")[0] == 1


def test_5_every_baseline_framework_must_still_be_measured(project):
    run(project, "--adapter", GOOD, results="base")
    run(project, "--adapter", FAKE + "NotHere")
    code, out = gate(project, "res", "--baseline", "base")
    assert code == 1 and "framework of the baseline 'numpy': every one of its" in out, out


def test_10_example_workflow_gates_every_framework_and_needs_no_missing_baseline():
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "bnconform.yml").read_text())
    steps = [str(s.get("run", "")) for s in wf["jobs"]["report-and-gate"]["steps"]]
    gates = [s for s in steps if "bnconform gate" in s]
    assert gates and not any("baseline/" in s for s in gates)
    required = set()
    for s in gates:
        if "--require-frameworks" in s:
            required |= set(s.split("--require-frameworks", 1)[1].split()[0].split(","))
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tox.ini")
    frameworks = set()
    for section in cfg.sections():
        cmd = cfg[section].get("commands", "")
        if "pytest cases" in cmd and "torch-cuda" not in section:
            frameworks |= {f.split(".")[0] for f in cmd.split("--framework ")[1:] for f in [f.split()[0]]}
    assert frameworks <= required, frameworks - required


# ------------------------------------------------------------------ 6. magnitude drift

def test_6_known_bug_that_gets_worse_fails_the_gate(project):
    run(project, "--adapter", FAKE + "KnownBugOffBy1", results="base")
    run(project, "--adapter", FAKE + "KnownBugOffBy1000")
    verdicts = {r["case_id"]: r["verdict"] for r in records(project)}
    assert verdicts["train-1step-m0.1"] == "known_bug"  # the verdict alone does not see it
    code, out = gate(project, "res", "--baseline", "base")
    assert code == 1 and "magnitude drift" in out and "train-1step-m0.1 on fake: known bug (known_bug)" in out, out
    code, out = gate(project, "base", "--baseline", "base")
    assert code == 0, out


def test_6_conforming_cell_drifting_towards_its_tolerance_fails_the_gate(project):
    run(project, "--adapter", GOOD, results="base")
    run(project, "--adapter", FAKE + "NearTolerance")
    rec = next(r for r in records(project) if r["case_id"] == "train-1step-m0.1")
    ratio = max(c["ratio"] for c in rec["comparisons"] if c["observable"] == "output")
    assert rec["verdict"] == "conforms" and 0.5 < ratio <= 1.0
    code, out = gate(project, "res", "--baseline", "base")
    assert code == 1 and "magnitude drift" in out and "forward(train) output" in out, out


# ------------------------------------------------------------------ 8. nothing compared

def test_8_cell_comparing_nothing_is_not_conforms(project):
    run(project, "--adapter", GOOD, results="base")
    run(project, "--adapter", FAKE + "OutputOnly")
    rec = next(r for r in records(project) if r["case_id"] == "train-counter-increments")
    assert rec["verdict"] == "unsupported" and rec["reason"].startswith("observes none of what this case checks")
    assert rec["comparisons"] == []
    code, out = gate(project, "res", "--baseline", "base")
    assert code == 1 and "train-counter-increments on numpy-reference: conforms -> unsupported" in out, out
    # The cells that still conform on `output` alone compared less than the baseline did: that fails too
    # (before lost_measurements the gate judged only the comparisons both runs made).
    kept = next(r for r in records(project) if r["case_id"] == "train-1step-m0.1")
    assert kept["verdict"] == "conforms" and {c["observable"] for c in kept["comparisons"]} == {"output"}
    assert "measured less than the baseline: train-1step-m0.1 on numpy-reference" in out, out


# ------------------------------------------------------------------ 9. versions fail closed

def test_9_unparseable_version_fails_closed_and_loudly(project):
    run(project, "--adapter", FAKE + "UnparseableVersion")
    recs = records(project)
    assert {r["verdict"] for r in recs} == {"error"}
    assert "not PEP 440" in recs[0]["reason"]
    code, out = gate(project, "res")
    assert code == 1 and "not PEP 440" in out, out


# ------------------------------------------------------------------ 11. broken adapter results

@pytest.mark.parametrize("adapter, reason", [("ReturnsNone", "returned NoneType"), ("ReturnsList", "returned list"),
                                             ("UnknownKeys", "unknown keys")])
def test_11_adapter_returning_garbage_gets_an_error_record_per_cell(project, adapter, reason):
    run(project, "--adapter", FAKE + adapter)
    recs = records(project)
    assert sorted(r["nodeid"] for r in recs) == sorted(collected(project))
    assert {r["verdict"] for r in recs} == {"error"} and all(reason in r["reason"] for r in recs)
    code, out = gate(project, "res")
    assert code == 1 and "adapter contract" in out, out


# ------------------------------------------------------------------ 12. native hangs

def test_12_native_hang_is_stopped_and_recorded_as_timed_out(project):
    run(project, "--adapter", FAKE + "NativeHang", "--timeout", "10", "--timeout-method", "thread", "-n", "2")
    recs = {r["case_id"]: r for r in records(project)}
    hung = recs["train-1step-m0.5"]
    assert hung["verdict"] == "error" and hung["reason"].startswith("timed out") and "crashed" not in hung["reason"]
    assert len(recs) == len(collected(project))
    code, out = gate(project, "res")
    assert code == 1 and "timed out" in out, out


def test_12_serial_run_stopped_by_the_timeout_is_incomplete(project):
    # Serial, the thread method ends the whole process: the shard has no run_end, the gate says so.
    run(project, "--adapter", FAKE + "NativeHang", "--timeout", "10", "--timeout-method", "thread")
    assert lines(project)[-1].get("kind") != "run_end"
    code, out = gate(project, "res")
    assert code == 1 and "incomplete: the run never finished" in out, out


def test_12_tox_envs_use_a_timeout_that_stops_native_hangs():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tox.ini")
    for section in cfg.sections():
        cmd = cfg[section].get("commands", "")
        if "pytest cases" in cmd:
            assert "--timeout-method thread" in cmd, f"{section}: SIGALRM cannot stop a native hang"


# ------------------------------------------------------------------ 13. duplicate case ids

def test_13_duplicate_case_id_across_files_is_a_collection_error(project):
    text = (project.path / "cases" / "training.yaml").read_text()
    (project.path / "cases" / "copy.yaml").write_text(text)
    result = run(project, "--adapter", GOOD)
    assert result.ret == 2
    result.stdout.fnmatch_lines(["*duplicate case id (first in cases/*.yaml)*"])
    code, out = gate(project, "res")
    assert code == 1 and "collection_error" in out, out


# ------------------------------------------------------------------ also

def test_regression_is_listed_once(project):
    run(project, "--adapter", GOOD, results="base")
    run(project, "--adapter", FAKE + "MomentumFlippedReference", results="res")
    # Same adapter name as the baseline's: the mutant's cells are regressions of numpy-reference.
    code, out = gate(project, "res", "--baseline", "base")
    assert code == 1
    fails = [ln for ln in out.splitlines() if "FAIL:" in ln and "train-1step-m0.1 on" in ln]
    assert len(fails) == 1 and "[baseline: conforms]" in fails[0], out


def test_legacy_shard_is_refused_unless_allowed(project):
    run(project, "--adapter", GOOD)
    shard = project.path / "res" / "scratch.jsonl"
    shard.write_text("".join(ln + "\n" for ln in shard.read_text().splitlines() if '"kind"' not in ln))
    code, out = gate(project, "res")
    assert code == 1 and "no run manifest" in out and "--allow-legacy-shards" in out, out
    code, out = gate(project, "res", "--allow-legacy-shards")
    assert code == 0 and "legacy shard" in out, out


def test_results_of_another_catalogue_fail(project):
    run(project, "--adapter", GOOD)
    path = project.path / "cases" / "training.yaml"
    path.write_text(path.read_text().replace("momentum: 0.1}", "momentum: 0.2}", 1))
    code, out = gate(project, "res")
    assert code == 1 and "run on another catalogue than the one on disk" in out, out
    other = project.path / "other"
    run(project, "--adapter", GOOD, results="other")
    code, out = gate(project, "res", other / "scratch.jsonl", "--allow-partial")
    assert code == 1 and "the shards were run on different catalogues" in out, out


def test_report_shows_an_incomplete_run_and_a_rerun_command_that_runs(project):
    from bnconform.report import build_context, rerun_command
    from bnconform.resultset import load_and_merge

    run(project, "--adapter", FAKE + "Interrupted")
    merged = load_and_merge([project.path / "res"])
    notices = build_context(merged)["run_notices"]
    assert any("ended interrupted" in n and "have no record" in n for n in notices), notices
    cmd = rerun_command(merged.records[0])
    assert f"--adapter {FAKE}Interrupted" in cmd
    # The command reruns the cell (outside tox: the plain pytest form).
    rec = merged.records[0].model_copy(update={"env": "local"})
    argv = __import__("shlex").split(rerun_command(rec))
    proc = subprocess.run([sys.executable, *argv[1:], "--results-dir", "rerun"], cwd=project.path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout


# ------------------------------------------------------------------ a precision divergence that stopped

def test_a_precision_divergence_fixed_on_a_whole_row_fails_the_run_and_the_gate(project):
    # numerics.yaml holds the ill-conditioned cases on which a one-pass variance leaves the canonical tolerance.
    shutil.copy(ROOT / "cases" / "numerics.yaml", project.path / "cases" / "numerics.yaml")
    honest = run(project, "--adapter", FAKE + "OnePassRow", results="base")
    assert honest.ret == 0, honest.stdout.str()[-3000:]
    assert gate(project, "base")[0] == 0
    fixed = run(project, "--adapter", FAKE + "FixedOnePassRow")
    verdicts = {r["verdict"] for r in records(project)}
    assert verdicts <= {"conforms", "known_bug", "unsupported"}  # no cell alone can tell
    assert fixed.ret == 1 and "BEHAVIOUR CHANGED: documented divergence fake-one-pass-variance no longer " \
                              "reproduces" in fixed.stdout.str()
    code, out = gate(project, "res")
    assert code == 1 and "fake-one-pass-variance no longer reproduces on fake: one-pass variance, fixed" in out, out


def test_an_unsupported_cell_is_reported_skipped_with_its_reason_and_still_recorded(project):
    result = run(project, "--adapter", FAKE + "OutputOnly", "-rs", "--junitxml", "junit.xml")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["SKIPPED*unsupported: observes none of what this case checks*"])
    assert result.parseoutcomes()["skipped"] >= 1
    junit = (project.path / "junit.xml").read_text()
    assert "<skipped" in junit and "observes none of what this case checks" in junit
    rec = next(r for r in records(project) if r["case_id"] == "train-counter-increments")
    assert rec["verdict"] == "unsupported"


def test_9_build_details_are_recorded_beside_a_pep440_version(project):
    run(project, "--adapter", FAKE + "WithBuild")
    recs = records(project)
    assert {(r["framework_version"], r["framework_build"]) for r in recs} == {("2.13.0", "cuDNN 91900, NVIDIA H100")}
    assert gate(project, "res")[0] == 0


def test_staleness_follows_the_files_a_shard_depends_on(tmp_path):
    """A shard is stale when a case file, or the expectations file of its OWN adapter groups, changed since it
    ran; another framework's expectations file may change freely (the release sweep's committed shards stay
    evidence across unrelated expectation edits). Two shards conflict only on files both depend on."""
    from bnconform.gate import _catalogue_disagreements, evaluate
    from bnconform.resultset import Merged
    from bnconform.results import (RunStart, Shard, catalogue_changes, catalogue_digest, catalogue_dirs,
                                   catalogue_files)

    cases, exp = tmp_path / "cases", tmp_path / "expectations"
    cases.mkdir()
    exp.mkdir()
    (cases / "t.yaml").write_text("theme: t\n")
    (exp / "onnx.yaml").write_text("groups: [onnx, onnxruntime]\nentries: []\n")
    (exp / "torch.yaml").write_text("groups: [torch]\nentries: []\n")
    dirs = catalogue_dirs(cases)

    def shard(name, groups):
        start = RunStart(env=name, started="t", catalogue_digest=catalogue_digest(dirs),
                         catalogue_files=catalogue_files(dirs, groups), groups=groups)
        return Shard(file=f"{name}.jsonl", start=start)

    ort, torch = shard("ort", ["onnxruntime"]), shard("torch", ["torch"])
    assert set(ort.start.catalogue_files) == {"cases/t.yaml", "expectations/onnx.yaml"}

    def stale(s):
        return catalogue_changes(s.start.catalogue_files, catalogue_files(dirs, s.start.groups))

    (exp / "torch.yaml").write_text("groups: [torch]\nentries: [{}]\n")
    assert stale(ort) == [] and stale(torch) == ["changed expectations/torch.yaml"]
    torch2 = shard("torch2", ["torch"])
    assert _catalogue_disagreements([ort, torch2]) == []  # neither depends on the other's expectations
    assert len(_catalogue_disagreements([torch, torch2])) == 1
    (exp / "onnx.yaml").write_text("groups: [onnx, onnxruntime]\nentries: [{}]\n")
    assert stale(ort) == ["changed expectations/onnx.yaml"]
    (cases / "u.yaml").write_text("theme: u\n")
    assert stale(torch2) == ["added cases/u.yaml"]
    assert len(_catalogue_disagreements([ort, shard("ort2", ["onnxruntime"])])) == 1
    # the gate names the changed file; a shard without a per-file record falls back to the whole digest
    res = evaluate(Merged(shards=[torch2]),
                   disk_catalogue=("cases", catalogue_digest(dirs), dirs))
    assert any("stale results" in p and "added cases/u.yaml" in p for p in res.problems), res.problems
