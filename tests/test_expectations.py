"""The expectations files (``expectations/*.yaml``): schema errors, selector
semantics, registration consistency, and the recorded selection of every entry.

``tests/data/expectation_selection.json`` records, per file and entry, which
catalogue cases the entry's ``where`` selector selects. A catalogue or
selector change that moves an expectation makes
``test_selection_matches_the_recorded_data`` fail, so the move shows up in
review. After checking that the move is intended, regenerate it with::

    python -m tests.test_expectations      # rewrites tests/data/expectation_selection.json
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnconform import expect
from bnconform.catalogue import load_catalogue
from bnconform.expect import ExpectationError, parse

from .test_oracle import make_case

ROOT = Path(__file__).resolve().parents[1]
SELECTION = ROOT / "tests" / "data" / "expectation_selection.json"


def entry_key(entry, entries) -> str:
    """An entry's key in the selection data: its id, plus its rows when the id repeats (one selector per row)."""
    if sum(e.id == entry.id for e in entries) > 1:
        return f"{entry.id} @ {', '.join(entry.adapters)}"
    return entry.id


def selection() -> dict:
    cases = load_catalogue(root=ROOT).cases
    return {f.path: {entry_key(e, f.entries): sorted(c.id for c in cases if e.where.matches(c)) for e in f.entries}
            for f in expect.builtin_files()}


def test_selection_matches_the_recorded_data():
    recorded = json.loads(SELECTION.read_text())
    now = selection()
    moved = []
    for file in sorted(set(recorded) | set(now)):
        old, new = recorded.get(file, {}), now.get(file, {})
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                a, b = set(old.get(key, [])), set(new.get(key, []))
                moved.append(f"{file}#{key}: +{sorted(b - a)} -{sorted(a - b)}"
                             + (" (new entry)" if key not in old else " (entry removed)" if key not in new else ""))
    assert not moved, ("expectation selectors now select other cases (regenerate with "
                       "`python -m tests.test_expectations` once intended):\n" + "\n".join(moved))


def test_every_builtin_group_has_one_expectations_file_and_every_entry_names_real_rows():
    from adapters import BUILTIN

    files = expect.builtin_files()  # parses and validates every file (adapters exist, groups exist, no overlap)
    covered = {g: f.path for f in files for g in f.groups}
    groups = {g for _, g in BUILTIN.values()}
    assert groups <= set(covered), f"BUILTIN groups without an expectations file: {sorted(groups - set(covered))}"
    for f in files:
        rows = {n for n, (_, g) in BUILTIN.items() if g in f.groups}
        for e in f.entries:
            assert set(e.adapters or rows) <= rows, f"{f.path}#{e.id}: rows of another file's groups"
            if e.finding:
                assert (ROOT / e.finding).is_file(), f"{f.path}#{e.id}: finding {e.finding} does not exist"


def test_an_entry_without_adapters_applies_to_every_row_of_the_file():
    class Row:
        name = "torch.nn.BatchNorm1d"

    ids = {e.id for e in expect.for_adapter(Row())}
    assert "torch-single-value-per-channel-rejected" in ids
    assert "inductor-half-precision-bn-backward" not in ids  # adapters: the compiled rows only

    class PlugIn:
        name = "not registered anywhere"

    assert expect.for_adapter(PlugIn()) == ()


BASE = "entries:\n- {id: e, kind: quirk, summary: s, source: src, %s}\n"


@pytest.mark.parametrize("body, field, message", [
    ("options: {no_such_knob: 1}", "options", "unknown oracle Profile knob"),
    ("options: {running_var_correction: sideways}", "options", "is not one of"),
    ("options: {ema_form: assign_sub}", "options", "is not one of"),
    ("options: {moments_count_offset: 1e-7}", "options", "write 1.0e-7"),
    ("options: {fixed_gamma: true}, raises: x", None, "exactly one of options, raises, expected_failure"),
    ("where: {dtype: [float8]}, options: {fixed_gamma: true}", "where.dtype[0]", "Input should be"),
    ("where: {case_id: [x]}, options: {fixed_gamma: true}", "where.case_id", "Extra inputs"),
    ("where: {reduction_size: [5]}, options: {fixed_gamma: true}", "where.reduction_size[0]", "Input should be"),
    ("versions: 'not a range', options: {fixed_gamma: true}", "versions", "PEP 440"),
    ("raises: '(unclosed'", "raises", "not a regular expression"),
    ("expected_failure: {observables: [output], max_ratio: 10, derivation: long enough derivation text}",
     None, "kind must be known_bug"),
])
def test_schema_errors_name_file_entry_and_field(body, field, message):
    with pytest.raises(ExpectationError, match=message) as err:
        parse(BASE % body, "expectations/x.yaml")
    assert err.value.file == "expectations/x.yaml" and err.value.entry_id == "e"
    assert err.value.field == field
    assert str(err.value).startswith("expectations/x.yaml: entry 'e'")


def test_bounds_duplicates_and_unknown_rows_are_errors():
    bug = ("entries:\n- {id: b, kind: known_bug, summary: s, source: src, finding: f.py, where: {dtype: [%s]},\n"
           "   expected_failure: {observables: [output], max_ratio: %s, derivation: derived from the defect}}\n")
    assert parse(bug % ("float16", "{float16: 8192}"), "x.yaml").entries[0].expected_failure.bound("float16") == 8192
    with pytest.raises(ExpectationError, match="no bound for dtype"):
        parse(bug % ("float16, bfloat16", "{float16: 8192}"), "x.yaml")
    with pytest.raises(ExpectationError, match="finite and > 1"):
        parse(bug % ("float16", "1.0"), "x.yaml")
    two = "entries:\n" + "".join(f"- {{id: d, kind: quirk, summary: s, source: src, adapters: [{a}], "
                                 "options: {fixed_gamma: true}}\n" for a in ("r1", "r1"))
    with pytest.raises(ExpectationError, match="duplicate entry id"):
        parse(two, "x.yaml")
    assert len(parse(two.replace("[r1]", "[r2]", 1), "x.yaml").entries) == 2  # one selector per row
    with pytest.raises(ExpectationError, match=r"unknown adapter\(s\) \['r1'\]"):
        parse(two.replace("[r1]", "[r2]", 1), "x.yaml", known_adapters={"r2"})
    with pytest.raises(ExpectationError, match="x.yaml: YAML syntax error at line"):
        parse("entries: [", "x.yaml")


def _case(steps, layer=None):
    return make_case(steps, layer)


def test_selector_vocabulary():
    W = expect.Where.model_validate
    train_bwd = _case([{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "sgd_step", "lr": 0.1}])
    eval_bwd = _case([{"op": "forward", "mode": "eval"}, {"op": "backward"}], layer={"track_running_stats": False})
    assert W({}).matches(train_bwd)
    assert W({"has_backward": True, "train_backward": True, "has_sgd_step": True}).matches(train_bwd)
    assert not W({"backward_after": ["eval"]}).matches(train_bwd) and W({"backward_after": ["eval"]}).matches(eval_bwd)
    assert W({"batch_stats_forward": True}).matches(eval_bwd)  # untracked: batch statistics in every mode
    assert W({"sgd_lr_float32_exact": False}).matches(train_bwd)  # 0.1 is not a float32 number
    assert W({"rank": [len(train_bwd.input.shape)], "channel_axis": [1]}).matches(train_bwd)
    assert not W({"any_of": [{"dtype": ["float16"]}, {"eval_forward": True}]}).matches(train_bwd)
    assert W({"any_of": [{"dtype": ["float16"]}, {"eval_forward": True}]}).matches(eval_bwd)
    frozen = _case([{"op": "forward", "mode": "train"}], layer={"frozen": ["weight"]})
    assert W({"frozen_count": [1], "trainable": ["bias"]}).matches(frozen) and not W({"trainable": ["weight"]}).matches(frozen)
    zero = _case([{"op": "forward", "mode": "train"}], layer={"eps": 0.0})
    assert W({"eps_zero": True}).matches(zero) and not W({"eps_zero": True}).matches(frozen)


def test_a_version_range_never_applies_to_an_unparseable_version():
    e = parse(BASE % "versions: '>=2.0', options: {fixed_gamma: true}", "x.yaml").entries[0]
    assert e.applies_to("2.1+cu130") and not e.applies_to("1.9")
    with pytest.raises(expect.VersionUnparseable, match="not PEP 440"):
        e.applies_to("2.13.0, cuDNN 91900")
    unranged = parse(BASE % "options: {fixed_gamma: true}", "x.yaml").entries[0]
    assert unranged.applies_to("2.13.0, cuDNN 91900")  # no range: nothing to decide


def test_the_report_names_the_expectations_entry_of_every_quirk_and_known_bug_cell():
    from bnconform.engine import run_cell
    from bnconform.report import build_context, merge

    from .test_engine import QuirkyBiased, case

    r = run_cell(case(), QuirkyBiased(), "1")
    ref = r.divergences[0]["ref"]
    assert ref.endswith("tests/data/expectations/engine.yaml#biased-running-var")
    ctx = build_context(merge([r]))
    (div,) = ctx["data"]["divergences"]
    assert div["ref"] == ref  # the embedded divergence the drill-down and the cell's tooltip show
    template = (ROOT / "bnconform" / "templates" / "app.js.j2").read_text()
    assert '"from ", el("code", {text: dv.ref})' in template  # the drill-down line
    assert 'dv.ref ? " from " + dv.ref' in template  # the tooltip (cellTip), built in the page from the data


def test_validate_reports_every_bad_file(tmp_path):
    (tmp_path / "a.yaml").write_text("groups: [torch]\nentries:\n- {id: x, kind: quirk, summary: s, source: s}\n")
    (tmp_path / "b.yaml").write_text("groups: [flax]\nentries: [\n")
    n, errors = expect.validate_all(tmp_path)
    assert [e.file.split("/")[-1] for e in errors] == ["a.yaml", "b.yaml"]
    assert "exactly one of options" in str(errors[0]) and "YAML syntax error" in str(errors[1])


if __name__ == "__main__":  # regenerate the recorded selection
    SELECTION.write_text(json.dumps(selection(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SELECTION.relative_to(ROOT)}")


def test_the_validate_console_script_finds_the_builtin_rows():
    # The console script runs with its own bin/ as sys.path[0], not the checkout: the BUILTIN rows must still
    # be found (they were not, and `bnconform validate` died on ModuleNotFoundError: adapters).
    import subprocess
    import sys

    script = Path(sys.executable).parent / "bnconform"  # installed with the package (every tox env)
    cmd = [str(script), "validate"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid expectation entries, 0 error(s)" in proc.stdout


def test_the_ema_form_knob_is_an_expectations_option():
    # The knob the tf.nn / tf-keras non-fused rows need (assign_moving_average's subtract form).
    entry = parse(BASE % "where: {train_forward: true, track_running_stats: true}, options: {ema_form: subtract}",
                  "x.yaml").entries[0]
    assert entry.options == {"ema_form": "subtract"} and "ema_form" in expect._profile_knobs()
