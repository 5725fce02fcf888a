"""The release sweep (issue 17): the release list, the history of verdicts across releases, and the
gate between two committed sweep shards (no rerun)."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from bnconform import history
from bnconform.results import catalogue_changes, catalogue_files, Collected, ResultRecord, ResultsWriter, RunEnd, RunStart, read_shards
from bnconform.sweep import load_releases

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "reports" / "sweep"


def test_release_list_pins_every_release():
    python, releases = load_releases(ROOT / "sweep.yaml")
    assert Version(python) >= Version("3.10")
    names = [r.name for r in releases]
    assert len(names) == len(set(names)) >= 60
    for r in releases:
        reqs = [Requirement(p) for p in r.pip + r.pip_no_deps]
        # the release's own version is pinned exactly (==), so a shard names what it measured
        pinned = {str(s.version) for q in reqs for s in q.specifier if s.operator == "=="}
        assert r.version in pinned, r.name
        assert r.groups, r.name
    by_fw: dict[str, list[Version]] = {}
    for r in releases:
        by_fw.setdefault(r.framework, []).append(Version(r.version))
    for fw, vs in by_fw.items():
        assert vs == sorted(vs), f"{fw}: releases are listed oldest first"


def _record(case: str, adapter: str, verdict: str, version: str, env: str, divergences=()) -> ResultRecord:
    return ResultRecord(case_id=case, case_file="cases/x.yaml", theme="x", title=case, behaviour="b",
                        adapter=adapter, framework="fw", framework_version=version, verdict=verdict, env=env,
                        divergences=[{"id": d, "kind": "quirk", "summary": f"{d} summary", "versions": ">=2",
                                      "source": "src"} for d in divergences],
                        nodeid=f"cases/x.yaml::{case}[{adapter}]", reason="why" if verdict != "conforms" else None)


def _shard(path: Path, env: str, records: list[ResultRecord], gz: bool = False) -> None:
    w = ResultsWriter(path.with_suffix(""))  if gz else ResultsWriter(path)
    w.write(RunStart(env=env, started="2026-01-01T00:00:00+00:00", catalogue_digest="sha256:x"))
    w.write(Collected(cells=[r.nodeid for r in records], full=len(records), partial=False))
    for r in records:
        w.write(r)
    w.write(RunEnd(how="complete", exitstatus=0, ended="2026-01-01T00:00:01+00:00", records=len(records)))
    w.close()
    if gz:
        with open(path.with_suffix(""), "rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
        path.with_suffix("").unlink()


def test_history_finds_the_release_where_a_cell_changes_and_its_explanation(tmp_path):
    for v, verdict, div in (("1.0", "conforms", ()), ("1.10", "quirk", ("q1",)), ("1.2", "conforms", ()),
                            ("2.0", "quirk", ("q1",))):
        # 1.10 sorts after 1.2 (PEP 440), not between 1.0 and 1.2
        _shard(tmp_path / f"fw-{v}.jsonl.gz", f"fw-{v}",
               [_record("c1", "A", verdict, v, f"fw-{v}", div), _record("c2", "A", "conforms", v, f"fw-{v}")],
               gz=True)
    series = history.load([tmp_path])
    s = series["fw"]
    assert s.releases == ["1.0", "1.2", "1.10", "2.0"]
    assert [(c.case_id, c.before, c.after) for c in s.changes] == [("c1", "1.2", "1.10")]
    ch = s.changes[0]
    assert not ch.unexplained and "starts holding" in ch.why[0] and "q1" in ch.why[0]
    md = history.changelog(series)
    assert "### 1.10 (from 1.2)" in md and "conforms → quirk (q1)" in md
    html = history.render(series)
    assert "changed" in html and "<script>alert" not in html


def test_history_flags_a_failing_change_as_unexplained(tmp_path):
    for v, verdict in (("1.0", "conforms"), ("1.1", "fails")):
        _shard(tmp_path / f"fw-{v}.jsonl", f"fw-{v}", [_record("<script>alert(1)</script>", "A", verdict, v,
                                                                 f"fw-{v}")])
    series = history.load([tmp_path])
    assert series["fw"].changes[0].unexplained
    assert "**UNEXPLAINED**" in history.changelog(series)
    html = history.render(series)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html  # autoescaped


def test_gate_between_two_committed_sweep_shards_needs_no_rerun(tmp_path):
    """`bnconform gate NEW --baseline OLD` on two swept releases, from a directory without ./cases (the
    shards may have been judged with an older catalogue than this checkout's: README 'The release sweep')."""
    shards = sorted(SWEEP.glob("onnxruntime-*.jsonl.gz"), key=lambda p: Version(p.name.split("-")[1][:-9]))
    if len(shards) < 2:
        pytest.skip("no committed onnxruntime sweep shards")
    for s in (shards[0], shards[-1]):
        assert read_shards([s])[0].end.how == "complete"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "bnconform.cli", "gate", str(shards[-1]), "--baseline", str(shards[0])],
                       cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "version onnxruntime BatchNormalization" in p.stdout, p.stdout + p.stderr
    # The committed shards are evidence of the catalogue they were judged with: the gate compares them as they
    # are when that is this checkout's catalogue, and refuses them as stale once cases or expectations changed
    # (re-sweep: README 'The release sweep') -- never a silent pass on old evidence.
    starts = [read_shards([s])[0].start for s in (shards[0], shards[-1])]
    dirs = [ROOT / "cases", ROOT / "expectations"]
    if all(st.catalogue_files is not None and not catalogue_changes(st.catalogue_files,
                                                                     catalogue_files(dirs, st.groups))
           for st in starts):
        assert p.returncode == 0, p.stdout + p.stderr
    else:
        assert p.returncode == 1 and "run on another catalogue than the one on disk" in p.stdout, p.stdout + p.stderr
