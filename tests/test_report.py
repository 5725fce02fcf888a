"""Report: merging shards, baseline diff, summary, escaping, the page's data contract, plot data, size, CLI.

Fixtures: tests/data/report/{current,baseline}/*.jsonl (hand-written; see make_fixtures.py there).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pydantic import ValidationError

from bnconform import report
from bnconform.cli import main
from bnconform.report import diff, load_and_merge, merge, render, source_groups, summary
from bnconform.report.contract import (WIRE_KEYS, AdapterInfo, BaselineCell, CaseInfo, Cell, ComparisonTable,
                                       DivergenceInfo, OtherRecord, ReportData, RowLayout, RunInfo, Source,
                                       Trajectory)
from bnconform.results import ResultRecord

DATA = Path(__file__).parent / "data" / "report"
CURRENT, BASELINE = DATA / "current", DATA / "baseline"
XSS_CASE = "<script>window.__pwned=1</script>"
WIRE_NAMES = {key: name for name, key in WIRE_KEYS.items()}


def rec(case="c", adapter="a", verdict="conforms", **kw) -> ResultRecord:
    base = dict(case_id=case, case_file="cases/x.yaml", theme="t", title="T", behaviour="B", adapter=adapter,
                framework="fw", framework_version="1.0", verdict=verdict)
    return ResultRecord(**{**base, **kw})


@pytest.fixture(scope="module")
def current():
    return load_and_merge([CURRENT])


@pytest.fixture(scope="module")
def baseline():
    return load_and_merge([BASELINE])


# ---------------------------------------------------------------- merge

def test_merge_keeps_first_and_reports_duplicates_conflicts_and_bad_lines(current):
    assert len(current.cells) == 12
    assert current.counts() == {"conforms": 6, "error": 2, "fails": 1, "quirk": 1, "known_bug": 1, "unsupported": 1}
    (dup_a, dup_b), = current.duplicates
    assert dup_a.cell == ("eval-uses-running", "fw_x.BatchNorm") and dup_b.platform == "darwin-arm64"
    (con_a, con_b), = current.conflicts
    assert con_a.cell == ("nhwc-train", "fw_x.BatchNorm")
    assert (con_a.verdict, con_b.verdict) == ("unsupported", "conforms")
    # the first record read wins the cell; the other is kept in the conflict, not dropped
    assert current.cells[con_a.cell].verdict == "unsupported"
    (bad,), = [current.bad_lines]
    assert bad.file.endswith("fw_x_mac.jsonl") and bad.line == 3 and "truncated" in bad.message


def test_merge_conflict_on_version_or_divergence_set_not_only_verdict():
    a = rec(verdict="quirk", divergences=[{"id": "d1"}])
    assert merge([a, rec(verdict="quirk", divergences=[{"id": "d1"}])]).duplicates
    assert merge([a, rec(verdict="quirk", divergences=[{"id": "d2"}])]).conflicts
    # Two framework versions of one adapter (tox version factors) sit side by side, not in conflict.
    both = merge([a, rec(verdict="fails", framework_version="1.1")])
    assert not both.conflicts and set(both.cells) == {("c", "a @ 1.0"), ("c", "a @ 1.1")}
    m = merge([a, rec(verdict="fails")])
    assert m.conflicts and m.cells[("c", "a")].verdict == "quirk"


def test_merge_of_directories_and_files_is_the_same(current):
    files = load_and_merge(sorted(CURRENT.glob("*.jsonl")))
    assert {k: r.verdict for k, r in files.cells.items()} == {k: r.verdict for k, r in current.cells.items()}


def test_gate_and_results_layer_import_no_html_code():
    """The gate merges and diffs through the results layer; the report package (Jinja2, matplotlib) stays out."""
    code = ("import sys, bnconform.gate, bnconform.resultset; "
            "print(sorted(m for m in sys.modules if m.startswith(('bnconform.report', 'jinja2', 'matplotlib'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_missing_results_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_and_merge([tmp_path / "nope"])


# ---------------------------------------------------------------- diff

def test_diff_lists_every_kind_of_change(baseline, current):
    d = diff(baseline, current)
    changed = {(c.case_id, c.adapter): c for c in d.changed}
    assert set(changed) == {("ema-3steps", "fw_y.BN"), ("fp16-train", "fw_x.BatchNorm"),
                            ("fp16-train", "fw_x.functional")}
    quirk = changed[("ema-3steps", "fw_y.BN")]
    assert (quirk.old_verdict, quirk.new_verdict) == ("conforms", "quirk")
    assert quirk.new_divergences == ("biased-running-var",) and not quirk.regression
    assert {(c.case_id, c.adapter) for c in d.regressions} == {("fp16-train", "fw_x.BatchNorm"),
                                                               ("fp16-train", "fw_x.functional")}
    assert d.new_cases == [XSS_CASE] and d.removed_cases == ["old-removed-case"]
    assert d.new_adapters == [] and d.removed_adapters == ["fw_z.Old"]
    # a cell of an existing case and adapter that only one run has
    assert d.added_cells == [("eval-uses-running", "fw_x.functional", "conforms")]
    assert d.removed_cells == []
    assert d.version_changes == [("fw_y.BN", "2.2", "2.3")]
    # unchanged: same verdict and same divergence set (fp16-train on fw_y stays a known bug)
    assert ("fp16-train", "fw_y.BN") not in changed


def test_diff_divergence_set_change_alone_is_a_change():
    old = merge([rec(verdict="quirk", divergences=[{"id": "a"}])])
    new = merge([rec(verdict="quirk", divergences=[{"id": "b"}])])
    (c,) = diff(old, new).changed
    assert (c.old_divergences, c.new_divergences) == (("a",), ("b",))
    assert "divergences [a] -> [b]" in diff(old, new).text()


def test_diff_of_identical_runs_is_empty(current):
    d = diff(current, current)
    assert d.empty and not d.regressions and d.text() == "no change against the baseline"


def test_diff_text_is_readable(baseline, current):
    text = diff(baseline, current).text()
    assert "changed cells (3):" in text
    assert "REGRESSION fp16-train on fw_x.BatchNorm: conforms -> error" in text
    assert "ema-3steps on fw_y.BN: conforms -> quirk; divergences [] -> [biased-running-var]" in text
    assert "removed cases (1):\n  old-removed-case" in text
    assert "removed adapters (1):\n  fw_z.Old" in text
    assert "new cells (1):\n  eval-uses-running on fw_x.functional: conforms" in text
    assert str(diff(baseline, current)) == text


def test_diff_new_and_removed_adapters_do_not_list_their_cells():
    old = merge([rec(adapter="a"), rec(case="d", adapter="a")])
    new = merge([rec(adapter="b"), rec(case="d", adapter="a")])
    d = diff(old, new)
    assert d.new_adapters == ["b"] and d.removed_adapters == []
    assert d.added_cells == [] and d.removed_cells == [("c", "a", "conforms")]


# ---------------------------------------------------------------- summary, sources, rerun

def test_summary_json(baseline, current):
    s = summary(current, diff(baseline, current))
    json.dumps(s)
    assert s["cells"] == 12 and s["duplicates"] == 1 and len(s["bad_lines"]) == 1
    assert {(f["case"], f["verdict"]) for f in s["failing"]} == {("fp16-train", "error"), ("fp16-train", "fails"),
                                                                 (XSS_CASE, "error")}
    assert s["conflicts"] == [{"case": "nhwc-train", "adapter": "fw_x.BatchNorm",
                               "verdicts": ["unsupported", "conforms"], "envs": ["fw_x", "fw_x"]}]
    assert s["baseline_diff"]["regressions"] == 2 and s["baseline_diff"]["removed_adapters"] == ["fw_z.Old"]
    assert "baseline_diff" not in summary(current)


def test_source_groups_by_seed_file_then_url(current):
    groups = source_groups(current.records)
    seed = groups[0]
    assert seed["file"] == "000_seed.txt" and seed["kind"] == "seed thread"
    assert seed["label"] == "Forum: BN running variance differs between frameworks [000_seed.txt]"
    assert seed["cases"] == ["ema-3steps"] and len(seed["titles"]) == 2
    paper = [g for g in groups if g["url"] == "https://arxiv.org/abs/1502.03167"]
    assert paper and "eval-uses-running" in paper[0]["cases"]
    # a javascript: URL never becomes a link
    assert all(g["url"] is None or g["url"].startswith("https://") for g in groups)


def test_rerun_command():
    assert report.rerun_command(rec(env="torch", nodeid="cases/x.yaml::c[a]")) == 'tox -e torch -- "cases/x.yaml::c[a]"'
    assert report.rerun_command(rec(env="local", nodeid="cases/x.yaml::c[a]")).startswith("python -m pytest")
    assert report.rerun_command(rec(env="torch", nodeid='x::"$(rm)"')) == "tox -e torch -- 'x::\"$(rm)\"'"
    assert report.rerun_command(rec(nodeid=None)) is None


# ---------------------------------------------------------------- HTML

@pytest.fixture(scope="module")
def html(baseline, current):
    return render(current, baseline_diff=diff(baseline, current), baseline_label="tests/data/report/baseline")


def test_html_is_self_contained(html):
    assert not re.search(r'(?i)<(script|link|img)[^>]+(src|href)\s*=\s*["\']?(https?:)?//', html)
    assert "@import" not in html and "Content-Security-Policy" in html


def test_html_escapes_markup_from_results(html):
    # exactly three script elements: the JSON data, the plotting library and the app; none from the data
    assert len(re.findall(r"(?i)<script", html)) == 3
    assert "window.__pwned" in html  # the text is there ...
    for raw in ("<script>window", "<img src=x", "<b>bold?</b>", 'href="javascript:'):
        assert raw not in html  # ... but only escaped
    data = re.search(r'<script type="application/json" id="bn-data">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data  # tojson escapes every '<'
    parsed = json.loads(data)
    assert XSS_CASE in [c["id"] for c in parsed["cases"]]


def test_html_has_header_matrix_views_and_merge_problems(html, current):
    for text in ("fw_x 1.0", "fw_y 2.3", "3.11.7", "linux-x86_64", "darwin-arm64", "cpu", "2026-01-02T03:04:05"):
        assert text in html
    # the theme matrix has every cell; the by-source matrix's rows are copied from it by the page script
    assert len(re.findall(r'<td class="c v-[a-z_]+[^"]*" data-i="', html)) == len(current.cells)
    source = re.search(r'<table class="matrix" id="m-source">.*?</table>', html, re.S).group(0)
    assert "<td" not in source and len(re.findall(r'<tr class="case clone" data-case="', source)) >= 5
    for view in ("view-theme", "view-source", "view-question", "view-diff", "view-env", "view-merge"):
        assert f'id="{view}"' in html
    assert "Conflicts (1)" in html and "Duplicates (1)" in html and "Unreadable result lines (1)" in html
    assert "REGRESSION fp16-train on fw_x.BatchNorm" in html


# ---------------------------------------------------------------- the page's data contract

APP_JS = Path(report.__file__).resolve().parents[1] / "templates" / "app.js.j2"
#: app.js.j2's names for data objects (its header comment) -> the contract model they hold.
JS_NAMES = {"D": ReportData, "cell": Cell, "cs": CaseInfo, "ad": AdapterInfo, "dv": DivergenceInfo, "src": Source,
            "other": OtherRecord, "was": BaselineCell, "ct": ComparisonTable, "lay": RowLayout, "run": RunInfo,
            "traj": Trajectory}
#: ... and the fields of a comparison row object (``rows()``: a table's columns and its layout's).
ROW_FIELDS = (set(ComparisonTable.model_fields) - {"layout"}) | set(RowLayout.model_fields)


def _embedded(html: str, block: str):
    return json.loads(re.search(rf'<script type="application/json" id="{block}">(.*?)</script>', html, re.S).group(1))


def test_embedded_data_validates_against_the_contract(html):
    data = ReportData.model_validate(_embedded(html, "bn-data"))
    assert len(data.cells) == 12 and len(data.adapters) == 3 and len(data.cases) == 5
    by_cell = {(data.cases[c.case].id, data.adapters[c.adapter].name): c for c in data.cells}
    # every matrix cell points at its data by index (data-i), with the same verdict
    tds = re.findall(r'<td class="c v-([a-z_]+)[^"]*" data-i="(\d+)"', html)
    assert len(tds) == 12 and all(data.cells[int(i)].verdict == v for v, i in tds)
    quirk = by_cell[("ema-3steps", "fw_y.BN")]
    assert quirk.verdict == "quirk" and data.divergences[quirk.divergences[0]].id == "biased-running-var"
    table = quirk.comparisons
    rows = data.layouts[table.layout]
    assert rows.step == [0, 0, 1, 1, 2, 2] and len(table.ratio) == 6
    assert [data.observables[k] for k in rows.observable[:2]] == ["running_mean", "running_var"]
    assert table.passed is None  # null: every row passed
    # the same rows (steps x observables) are one layout, stored once for every table that has them; the
    # canonical comparisons keep only the rows the divergence changes (running_var: 1, 3, 5) and fail there
    canonical = quirk.canonical_comparisons
    assert canonical.layout == table.layout and canonical.rows == [1, 3, 5] and canonical.passed == [False] * 3
    assert len({(tuple(l.step), tuple(l.observable)) for l in data.layouts}) == len(data.layouts)
    ema = data.cases[quirk.case]
    assert ema.steps == ["forward(train)"] * 3  # each step's operation once per case, not per row
    assert quirk.run is None  # its adapter's run
    assert data.runs[data.adapters[quirk.adapter].run].model_dump(exclude={"t0"}) == dict(
        env="fw_y", framework_version="2.3", python="3.11.7", platform="linux-x86_64", device="cpu")
    assert quirk.baseline == BaselineCell(verdict="conforms", divergences=[], framework_version="2.2")
    assert by_cell[("eval-uses-running", "fw_x.functional")].baseline.verdict is None  # new cell
    conflict = by_cell[("nhwc-train", "fw_x.BatchNorm")]
    assert conflict.mark == "conflict" and [o.verdict for o in conflict.others] == ["conforms"]
    assert by_cell[("eval-uses-running", "fw_y.BN")].comparisons is None


def _named(raw: dict) -> dict:
    """An embedded cell (or table, trajectory) keyed by field names, as the page script renames it."""
    return {WIRE_NAMES[k]: v for k, v in raw.items()}


def test_cells_leave_out_fields_equal_to_their_defaults(html):
    raw = _embedded(html, "bn-data")
    unsupported = next(_named(c) for c in raw["cells"] if _named(c)["verdict"] == "unsupported")
    assert "baseline" not in unsupported and "comparisons" not in unsupported and "reason" in unsupported
    assert "nodeid" not in unsupported  # the standard CASE_FILE::CASE[ADAPTER]: the page composes it
    assert raw["cell_defaults"]["divergences"] == [] and raw["cell_defaults"]["comparisons"] is None
    assert set(raw["cell_defaults"]) == {n for n, f in Cell.model_fields.items() if not f.is_required()}


def test_plot_data_is_embedded_once(html):
    """The canonical oracle once per case; an adapter's values only where they differ from it at the
    plotted precision; the divergent oracle only where it differs; no image in the page."""
    data = ReportData.model_validate(_embedded(html, "bn-data"))
    by_cell = {(data.cases[c.case].id, data.adapters[c.adapter].name): c for c in data.cells}
    ema = next(c for c in data.cases if c.id == "ema-3steps")
    oracle = {t.observable: t for t in ema.oracle}
    assert set(oracle) == {"running_mean", "running_var"} and oracle["running_var"].step == [0, 1, 2]
    assert oracle["running_var"].value[0] == [1.0, 0.9] and oracle["running_var"].channels == 2
    conforming = by_cell[("ema-3steps", "fw_x.BatchNorm")]  # off by 1e-8: the oracle's values at 4 digits
    assert conforming.trajectories == ["running_mean", "running_var"]  # names alone: as the oracle
    assert conforming.oracle_trajectories == []
    quirk = by_cell[("ema-3steps", "fw_y.BN")]
    (alt,) = quirk.oracle_trajectories  # running_mean's divergent oracle is the canonical one: left out
    assert alt.observable == "running_var" and alt.value[0] == [0.9, 0.81]  # biased: 0.9x
    # the adapter's values are those of the oracle it was judged against (running_var: the divergent one)
    assert quirk.trajectories == ["running_mean", "running_var"]
    assert by_cell[("fp16-train", "fw_x.functional")].trajectories == []  # compares no running statistics
    assert "data:image" not in html and "base64" not in html and "<img" not in html


def test_what_the_page_can_compose_is_not_sent():
    """A quirk's reason starts with its divergences' summaries (in the data already); the standard rerun
    command is the env and the node id (both in the data)."""
    from bnconform.report.data import _reason, _rerun
    d = {"id": "biased-var", "kind": "quirk", "summary": "biased running variance"}
    r = rec(verdict="known_bug", divergences=[d, {**d, "id": "x"}], env="torch", nodeid="cases/x.yaml::c[a]",
            reason="biased-var: biased running variance; x: biased running variance — error 3x the tolerance")
    assert _reason(r) == {"reason": " — error 3x the tolerance", "reason_cites_divergences": True}
    assert _reason(r.model_copy(update={"reason": "other text"})) == {"reason": "other text",
                                                                       "reason_cites_divergences": False}
    assert _reason(rec(verdict="error", reason="boom")) == {"reason": "boom"}
    assert _rerun(r) is None  # tox -e torch -- "cases/x.yaml::c[a]": the page composes it
    for update in ({"env": "local"}, {"plugin_adapter": "pkg.mod:Cls"}, {"nodeid": 'cases/x.yaml::c["$HOME"]'}):
        other = r.model_copy(update=update)
        assert _rerun(other) == report.rerun_command(other) is not None
    # node ids: CASE_FILE::CASE[ADAPTER] is composed by the page, also for version columns (adapter @ version)
    both = [rec(adapter="bn", framework_version=v, env=f"e{v}", nodeid="cases/x.yaml::c[bn]") for v in ("1", "2")]
    odd = rec(case="d", adapter="bn", framework_version="2", env="e2", nodeid="elsewhere.yaml::d[bn]")
    raw = _embedded(render(merge([*both, odd]), plots=False), "bn-data")
    assert [a["name"] for a in raw["adapters"]] == ["bn @ 1", "bn @ 2"]
    assert [a["record_name"] for a in raw["adapters"]] == ["bn", "bn"]
    assert [_named(c).get("nodeid", "") for c in raw["cells"]] == ["", "", "elsewhere.yaml::d[bn]"]


def test_contract_rejects_unknown_fields_and_ragged_comparison_tables():
    with pytest.raises(ValidationError, match="columns of unequal length"):
        ComparisonTable(layout=0, passed=[True, True], max_abs_err=[0.0], max_rel_err=[0.0],
                        tol_at_worst=[1.0], ratio=[0.0])
    with pytest.raises(ValidationError, match="2 steps but 1 observables"):
        RowLayout(step=[0, 1], observable=[0])
    with pytest.raises(ValidationError, match="2 steps but 1 values"):
        Trajectory(observable="running_var", channels=1, step=[0, 1], value=[[1.0]])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ReportData.model_validate({"cases": [], "adapters": [], "divergences": [], "cells": [], "glyphs": {},
                                   "runs": [], "observables": [], "layouts": [], "cell_defaults": {},
                                   "plots_note": None, "rows": []})


def test_every_contract_field_is_documented():
    for model in {*JS_NAMES.values(), OtherRecord, RowLayout}:
        assert model.__doc__
        assert [n for n, f in model.model_fields.items() if not f.description] == [], model.__name__
    schema = ReportData.model_json_schema(by_alias=False)
    assert "description" in schema["$defs"]["ComparisonTable"]["properties"]["ratio"]


def test_cells_tables_and_trajectories_have_short_keys(html):
    """The field names were a third of the page data: cells, comparison tables and trajectories (thousands
    of each) are keyed by WIRE_KEYS, one key per name, and the data says how to read them back."""
    assert len(set(WIRE_KEYS.values())) == len(WIRE_KEYS)
    raw = _embedded(html, "bn-data")
    assert raw["field_names"] == WIRE_NAMES
    for model in (Cell, ComparisonTable, Trajectory):
        assert set(model.model_fields) <= set(WIRE_KEYS), model.__name__
    quirk = next(c for c in raw["cells"] if c["v"] == "quirk")
    assert {"c", "a", "v", "k", "kc"} <= set(quirk) and {"l", "ae", "re", "tw", "q"} <= set(quirk["k"])
    assert not {"case", "verdict", "comparisons", "ratio"} & (set(quirk) | set(quirk["k"]))


def test_page_script_reads_only_fields_of_the_contract():
    """A field renamed on one side only would leave part of the drill-down empty: no browser error shows it."""
    js = APP_JS.read_text(encoding="utf-8")
    fields = {v: set(m.model_fields) for v, m in JS_NAMES.items()} | {"row": ROW_FIELDS}
    read = set(re.findall(r"\b(" + "|".join(fields) + r")\.([A-Za-z_]\w*)", js))
    unknown = sorted(f"{v}.{f}" for v, f in read if f not in fields[v])
    assert not unknown, f"app.js.j2 reads fields the contract does not have: {unknown}"
    assert {v for v, _ in read} == set(fields)  # every name is in use, so the check covers the drill-down
    # rows are read by field name, never by position
    assert not re.search(r"\b(row|cell|r)\[\d+\]", js)


def test_cli_report_with_baseline_and_summary(tmp_path, capsys):
    out, summ = tmp_path / "r" / "parity.html", tmp_path / "r" / "summary.json"
    rc = main(["report", str(CURRENT), "--out", str(out), "--summary", str(summ), "--baseline", str(BASELINE),
               "--no-plots"])
    assert rc == 0 and out.exists()
    captured = capsys.readouterr()
    assert "REGRESSION fp16-train on fw_x.BatchNorm" in captured.out
    assert "CONFLICT nhwc-train on fw_x.BatchNorm" in captured.err and "truncated" in captured.err
    assert json.loads(summ.read_text())["baseline_diff"]["new_cases"] == [XSS_CASE]
    assert "plots were switched off" in out.read_text()


def test_cli_report_exit_codes(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "x.html"), "--no-plots"]) == 2
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "x.html")]) == 2


# ---------------------------------------------------------------- plots, vendored library, size

def test_no_plots_leaves_out_the_plot_data_and_the_library(current):
    html = render(current, plots=False)
    data = ReportData.model_validate(_embedded(html, "bn-data"))
    assert data.plots_note and all(c.oracle == [] for c in data.cases)
    assert all(c.trajectories == [] and c.oracle_trajectories == [] for c in data.cells)
    assert 'id="uplot-js"' not in html and "Leon Sorokin" not in html and len(re.findall(r"(?i)<script", html)) == 2
    with_plots = render(current)
    assert 'id="uplot-js"' in with_plots and "Copyright (c) 2022 Leon Sorokin" in with_plots  # MIT notice kept


def test_vendored_files_can_be_inlined_and_a_bad_one_is_refused(tmp_path, monkeypatch):
    import importlib
    render_mod = importlib.import_module("bnconform.report.render")  # the module (the package re-exports render())
    vendor = Path(render_mod.__file__).resolve().parents[1] / "templates" / "vendor"
    assert f"(v{render_mod.UPLOT_VERSION})" in (vendor / "uPlot.iife.min.js").read_text()[:200]
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        assert render_mod.vendored(name) == (vendor / name).read_text(encoding="utf-8")
    assert render_mod.vendored("uPlot.LICENSE", in_comment=True).startswith("The MIT License")
    # a file that would end its <script> element (or the comment it sits in) is refused
    from jinja2 import Environment, FileSystemLoader
    bad = tmp_path / "vendor"
    bad.mkdir(parents=True)
    (bad / "x.js").write_text("var a = '</SCRIPT><script>alert(1)';")
    (bad / "l.txt").write_text("licence */ alert(1) /*")
    monkeypatch.setattr(render_mod, "environment", lambda: Environment(loader=FileSystemLoader(tmp_path)))
    render_mod.vendored.cache_clear()
    try:
        with pytest.raises(ValueError, match="cannot be inlined"):
            render_mod.vendored("x.js")
        with pytest.raises(ValueError, match="cannot be inlined"):
            render_mod.vendored("l.txt", in_comment=True)
        assert render_mod.vendored("l.txt") == "licence */ alert(1) /*"
    finally:
        render_mod.vendored.cache_clear()


#: Share of ``unsupported`` cells in the full matrix (3,560 of 7,767 cells on 2026-11-30): cases an adapter
#: cannot express, with a reason and no comparisons.
UNSUPPORTED_SHARE = 0.46
#: The full matrix the page must hold in :data:`PAGE_BUDGET` bytes (issue 22).
FULL_MATRIX_CELLS, PAGE_BUDGET = 7_800, 5_000_000


def _many_cells(n_cases: int, n_adapters: int, unsupported: float = UNSUPPORTED_SHARE) -> list[ResultRecord]:
    """A synthetic matrix shaped like a real run: a share ``unsupported`` of the cells is unsupported (the
    adapter cannot express the case: one of its three reasons, no comparisons); the others have 2 steps x 8
    observables (~17 comparisons per compared cell in the full matrix), running statistics of 8 channels (a
    third of the adapters off the oracle at the plotted precision), varied errors; every cell a node id,
    rerun command, time and duration."""
    import random
    rng = random.Random(n_cases * 1000 + n_adapters)
    obs = ["output", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var", "weight", "bias"]
    out = []
    for c in range(n_cases):
        for a in range(n_adapters):
            case_id, adapter = f"case-{c:03d}-with-a-realistic-id", f"fw{a % 5}.BatchNorm[variant {a}]"
            common = dict(case=case_id, adapter=adapter, framework=f"fw{a % 5}", env=f"env{a % 5}",
                          nodeid=f"cases/x.yaml::{case_id}[{adapter}]", duration_s=rng.random(),
                          timestamp=f"2026-01-02T03:{c % 60:02d}:{a % 60:02d}+00:00")
            if rng.random() < unsupported:
                reason = (f"{adapter} is forward-only: {rng.choice(['no gradient', 'no optimizer', 'no training'])}"
                          " in this runtime (training needs a different program, the adapter cannot express it)")
                out.append(rec(verdict="unsupported", reason=reason, **common))
                continue
            cmps = []
            for step in range(2):
                for o in obs:
                    err = rng.random() * 1e-6
                    tol = 1e-5 * (1 + rng.random())
                    row = {"step": step, "op": "forward(train)" if step < 1 else "forward(eval)", "observable": o,
                           "passed": True, "max_abs_err": err, "max_rel_err": err * 3.3, "tol_at_worst": tol,
                           "ratio": err / tol, "headroom": tol / err, "message": None}
                    if o in ("running_mean", "running_var"):
                        row["expected"] = [0.1 * (ch + 1) * (step + 1) for ch in range(8)]
                        row["actual"] = [v * (1 + (a % 3) * 1e-3) for v in row["expected"]]
                    cmps.append(row)
            out.append(rec(comparisons=cmps, **common))
    return out


def test_page_size_per_cell_fits_the_full_matrix_budget():
    """The full matrix (~7,800 cells, every env, 46 % of them unsupported) must fit in one 5 MB page: what one
    more cell costs, measured between two synthetic matrices with the real unsupported share (so the fixed
    part, e.g. the inlined plotting library, cancels out), times the full matrix, plus the fixed part, must
    stay under 5 MB. Contract 3 costs ~490 bytes per cell here (3.9 MB for the full matrix); the encoding
    before it (every unsupported cell with its own reason text, node id and time string; every comparison
    table with its own steps and observables; field names as keys; numbers as ``repr`` writes them; the
    by-source matrix sent as HTML too) costs ~930 bytes per cell (7.4 MB) and fails it; prerendered images
    (~5 kB per cell) fail it by far."""
    small = len(render(merge(_many_cells(10, 12))).encode("utf-8"))
    large = len(render(merge(_many_cells(20, 24))).encode("utf-8"))
    per_cell = (large - small) / (20 * 24 - 10 * 12)
    fixed = small - per_cell * 10 * 12
    assert fixed < 150_000, f"{fixed:.0f} bytes without any cell"
    full = FULL_MATRIX_CELLS * per_cell + fixed
    assert full < PAGE_BUDGET, (f"{per_cell:.0f} bytes per cell: the full matrix would take {full / 1e6:.2f} MB, "
                                f"over the {PAGE_BUDGET / 1e6:.0f} MB budget")


def test_unsupported_cells_share_their_adapters_reasons():
    """Each adapter's distinct reasons are stored once; every cell still gets its own reason back."""
    records = _many_cells(12, 10)
    raw = _embedded(render(merge(records), plots=False), "bn-data")
    data = ReportData.model_validate(raw)
    by_cell = {(r.case_id, r.adapter): r for r in records}
    unsupported = [c for c in data.cells if c.verdict == "unsupported"]
    assert len(unsupported) > 30
    for cell in unsupported:
        want = by_cell[(data.cases[cell.case].id, data.adapters[cell.adapter].name)].reason
        assert data.adapters[cell.adapter].reasons[cell.reason] == want
    assert all(len(a.reasons) <= 3 for a in data.adapters)  # three reasons per adapter, each once
    assert sum(len(a.reasons) for a in data.adapters) < len(unsupported) / 2


def test_report_needs_no_matplotlib(tmp_path):
    """The page draws its plots itself: writing a report imports no plotting library in Python."""
    code = ("import sys; from bnconform.report import write_report; "
            f"write_report([{str(CURRENT)!r}], {str(tmp_path / 'p.html')!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'PIL')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]" and (tmp_path / "p.html").stat().st_size > 50_000


# ---------------------------------------------------------------- the Explored view (bnconform explore summaries)

EXPLORE = DATA / "explore"


def _section(html: str, view: str) -> str:
    return re.search(rf'<section id="view-{view}".*?</section>', html, re.S).group(0)


def test_explored_view_lists_each_adapter_and_its_minimal_cases(current):
    explored = report.load_explored([EXPLORE])
    assert explored.problems == [] and len(explored.runs) == 1
    assert explored.per_adapter() == [
        {"adapter": "fw_x.BatchNorm", "version": "1.0", "runs": 1, "examples": 60, "divergences": 2},
        {"adapter": "fw_x.functional", "version": "1.0", "runs": 1, "examples": 60, "divergences": 0}]
    section = _section(render(current, explored=explored, plots=False), "explored")
    assert "No exploration run was merged" not in section
    for text in ("explored-s0-fw_x-batchnorm-1", "explored-s0-fw_x-batchnorm-2", "fails", "error",
                 "running_var: max abs err 0.5 &gt; tol 1.2e-07 (x4.17e+06)",
                 "pytest &#39;reports/explore/cases/explored-20261130T120000Z-s0.yaml::explored-s0-fw_x-batchnorm-1"
                 "[fw_x.BatchNorm]&#39; --framework fw_x",
                 "bnconform explore --framework fw_x --seed 0", "2026-11-30T12:00:00Z, seed 0"):
        assert text in section, text
    # markup in a finding stays text (autoescaped)
    assert "<img src=x" not in section and "&lt;img src=x onerror=window.__pwned=7&gt;" in section
    rows = re.findall(r"<tr[^>]*><td>(fw_x\.\w+)</td><td>1\.0</td><td class=\"num\">(\d+)</td>"
                      r"<td class=\"num\">(\d+)</td><td class=\"num\">(\d+)</td>", section)
    assert rows == [("fw_x.BatchNorm", "1", "60", "2"), ("fw_x.functional", "1", "60", "0")]


def test_explored_view_says_when_no_exploration_was_merged(current, tmp_path):
    none = _section(render(current, plots=False), "explored")
    assert "No exploration run was merged" in none and "no <code>--explored</code> directory was given" in none
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "explore-x.json").write_text('{"run": {}}')
    explored = report.load_explored([tmp_path / "missing", tmp_path / "empty", tmp_path / "bad"])
    assert explored.runs == [] and len(explored.problems) == 3
    section = _section(render(current, explored=explored, plots=False), "explored")
    assert "No exploration run was merged" in section
    assert "missing: no such file or directory" in section and "empty: no explore-*.json in it" in section
    assert "explore-x.json: not a readable exploration summary" in section


def test_explored_view_reads_what_bnconform_explore_writes(current, tmp_path):
    """The reader and the writer (bnconform.explore.summary) agree on the format."""
    from bnconform import explore
    from bnconform.catalogue import Case

    fixture = json.loads((EXPLORE / "explore-20261130T120000Z-s0.json").read_text())
    found = fixture["adapters"][0]["findings"][0]
    case = Case.model_validate({**found["case"], "file": "x.yaml", "theme": "explored"})
    record = rec(case=case.id, adapter="fw_x.BatchNorm", verdict="fails", reason="running_var off")
    e = explore.Exploration("fw_x.BatchNorm", "fw_x", "1.0", "pkg:Cls", None, examples=7,
                            findings=[explore.Finding("fails:running_var", case, record, 3, 4)])
    path = tmp_path / "cases" / "explored.yaml"
    (tmp_path / "explore-1.json").write_text(json.dumps(explore.summary([e], fixture["run"], path), default=str))
    (run,) = report.load_explored([tmp_path]).runs
    (a,) = run[1].adapters
    assert (a.adapter, a.examples, [f.case_id for f in a.findings]) == ("fw_x.BatchNorm", 7, [case.id])
    assert a.findings[0].verdict == "fails" and a.findings[0].reproduce.startswith("pytest ")


def test_cli_report_merges_explore_summaries(tmp_path, capsys):
    out = tmp_path / "parity.html"
    assert main(["report", str(CURRENT), "--out", str(out), "--no-plots", "--explored", str(EXPLORE),
                 "--explored", str(tmp_path / "none")]) == 0
    assert "explored: " in capsys.readouterr().err
    section = _section(out.read_text(), "explored")
    assert "explored-s0-fw_x-batchnorm-2" in section and "none: no such file or directory" in section
