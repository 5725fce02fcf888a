"""The upgrade gate on real engine records (NumPy adapters standing in for framework versions)."""

from pathlib import Path

import pytest

from bnconform import cli
from bnconform.catalogue import load_catalogue
from bnconform.engine import run_cell
from .numpy_bn import MutantBiasedRunningVar, NumpyBatchNorm
from .shards import write_shard
from .test_engine import QuirkyBiased

ROOT = Path(__file__).resolve().parents[1]
CASES = [c for c in load_catalogue([ROOT / "cases" / "training.yaml"], ROOT).cases][:6]


def shard(tmp_path: Path, name: str, adapter, version="1.0", rename=None, framework=None) -> Path:
    records = []
    for case in CASES:
        r = run_cell(case, adapter, version)
        upd = {}
        if rename:
            upd["adapter"] = rename
        if framework:
            upd["framework"] = framework
        records.append(r.model_copy(update=upd))
    return write_shard(tmp_path / f"{name}.jsonl", records)


def run_gate(*args) -> tuple[int, str]:
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        code = cli.main(["gate", *map(str, args)])
    return code, buf.getvalue()


def test_same_behaviour_passes(tmp_path):
    old = shard(tmp_path, "old", NumpyBatchNorm(), "1.0")
    new = shard(tmp_path, "new", NumpyBatchNorm(), "2.0")
    code, out = run_gate(new, "--baseline", old, "--require-frameworks", "numpy")
    assert code == 0, out
    assert "GATE PASSED" in out and "1.0 -> 2.0" in out


def test_new_divergence_fails_and_names_cells_then_passes_with_updated_baseline(tmp_path):
    # Version 2 "changes" its running variance to biased and documents it as a quirk.
    old = shard(tmp_path, "old", NumpyBatchNorm(), "1.0", rename="bn")
    new = shard(tmp_path, "new", QuirkyBiased(), "2.0", rename="bn")
    code, out = run_gate(new, "--baseline", old)
    assert code == 1
    assert "behaviour changed: train-1step-m0.1 on bn: conforms -> quirk" in out
    assert "[] -> [biased-running-var]" in out
    code, out = run_gate(new, "--baseline", new)  # the baseline updated to the new behaviour
    assert code == 0, out


def test_undocumented_change_fails_without_baseline_too(tmp_path):
    new = shard(tmp_path, "new", MutantBiasedRunningVar())
    code, out = run_gate(new)
    assert code == 1 and "fails: train-1step-m0.1 on mutant: biased running_var" in out


def test_required_framework_missing_or_fully_unsupported_fails(tmp_path):
    new = shard(tmp_path, "new", NumpyBatchNorm())
    code, out = run_gate(new, "--require-frameworks", "numpy,tensorflow")
    assert code == 1 and "required framework 'tensorflow' produced no results" in out

    class Nothing(NumpyBatchNorm):
        name = "supports nothing"

        def capabilities(self, case):
            return "no"

    code, out = run_gate(shard(tmp_path, "none", Nothing()), "--require-frameworks", "numpy")
    assert code == 1 and "every one of its 6 cells is unsupported" in out


def test_removed_cells_and_corrupt_results_fail(tmp_path):
    old = shard(tmp_path, "old", NumpyBatchNorm())
    new = tmp_path / "new.jsonl"
    new.write_text("\n".join(old.read_text().splitlines()[:-2]) + "\n{truncated")  # last record and run_end lost
    code, out = run_gate(new, "--baseline", old)
    assert code == 1
    assert "case removed since the baseline" in out and "unreadable result line" in out
    assert "incomplete: the run never finished" in out and "1 of 6 collected cell(s) have no record" in out


def test_map_adapter_compares_across_apis(tmp_path):
    old = shard(tmp_path, "old", NumpyBatchNorm(), rename="tf_keras.BatchNormalization(fused=True)")
    new = shard(tmp_path, "new", QuirkyBiased(), rename="keras.layers.BatchNormalization")
    code, out = run_gate(new, "--baseline", old, "--map-adapter",
                         "tf_keras.BatchNormalization(fused=True)", "keras.layers.BatchNormalization")
    assert code == 1 and "on keras.layers.BatchNormalization: conforms -> quirk" in out
    with pytest.raises(SystemExit):
        cli.main(["gate"])


def test_empty_results_never_pass(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out = run_gate(empty)
    assert code == 1 and "nothing was tested" in out


@pytest.mark.parametrize("old, new, drifted", [
    (0.001, 0.24, False),   # both within rounding noise (< 1/SAFETY)
    (0.001, 0.45, False),   # floored 0.25 -> 0.45: less than one bit
    (0.001, 0.9, True),     # issue 15: 1e-3 -> 0.9 of the tolerance
    (10.0, 19.0, False),    # a known bug's error, less than doubled
    (10.0, 10_000.0, True),  # a known bug 1000x worse
    (0.5, float("inf"), True),
    (0.9, 0.1, True),       # shrank: reported (as a note, not a failure)
])
def test_drift_rule_floor_and_factor(old, new, drifted):
    from bnconform.gate import drift
    from bnconform.resultset import merge

    rec = run_cell(CASES[0], NumpyBatchNorm(), "1")

    def with_ratio(r):
        return rec.model_copy(update={"comparisons": [{"step": 0, "op": "forward(train)", "observable": "output",
                                                       "ratio": None if r == float("inf") else r}]})
    found = drift(merge([with_ratio(old)]), merge([with_ratio(new)]))
    assert bool(found) == drifted
    if found:
        assert found[0].worse == (new > old)


def test_verdicts_without_or_against_their_evidence_fail(tmp_path):
    # A record the engine never writes (another tool, an older version, an edit): conforms with nothing
    # compared and no documented refusal, or conforms/quirk with a failing comparison. Both fail the gate,
    # with and without a baseline; the honest shard passes.
    good = shard(tmp_path, "good", NumpyBatchNorm())
    code, out = run_gate(good)
    assert code == 0, out
    from bnconform.results import read_shards

    recs = [r for s in read_shards([good]) for r in s.records]
    assert recs[0].verdict == "conforms" and recs[0].comparisons
    empty = recs[0].model_copy(update={"comparisons": []})
    failing = recs[1].model_copy(update={"comparisons": [{**recs[1].comparisons[0], "passed": False}]})
    write_shard(tmp_path / "bad.jsonl", [empty, failing, *recs[2:]])
    code, out = run_gate(tmp_path / "bad.jsonl")
    assert code == 1
    assert f"{recs[0].case_id} on numpy-reference is conforms but compared no value" in out, out
    assert f"{recs[1].case_id} on numpy-reference is conforms but 1 of its comparisons failed" in out, out
    code, out = run_gate(tmp_path / "bad.jsonl", "--baseline", good)
    assert code == 1 and "measured less than the baseline" in out, out
