"""Build the page's embedded data (the ``#bn-data`` block) from merged records.

The shapes are :mod:`bnconform.report.contract`; this module only fills them:
rounding numbers to what the page shows, keeping http(s) URLs only, storing
each divergence, run, observable name, comparison row layout and (per adapter)
reason once, turning a record's comparison list into a
:class:`~.contract.ComparisonTable` and its running statistics into
:class:`~.contract.Trajectory` lists (the plot data). It builds plain JSON
values (no model object per cell: that cost more than the rest of the report)
and validates the whole block against the contract once.
:class:`Layout` fixes the order of rows (cases), columns (adapters) and cells
that the matrix and the data share (a matrix cell's ``data-i`` is its index
in ``ReportData.cells``).
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from ..results import ResultRecord
from ..resultset import Diff, Merged, divergence_ids, version_label
from .contract import (CONTRACT_VERSION, PLOT_CHANNELS, PLOT_DIGITS, Cell, OtherRecord, Trajectory, cell_defaults,
                       field_names, to_wire, validate_data)

#: One glyph per verdict so the matrix reads without colour too.
GLYPHS = {"conforms": "\u2713", "quirk": "Q", "known_bug": "B", "fails": "\u2717",
          "unsupported": "\u2013", "error": "!"}


#: Per-channel observables whose values after each step are plotted.
TRAJECTORY_OBSERVABLES = ("running_mean", "running_var")
#: Order of the observables in the page (the ratio plot's x axis); others follow by name.
OBSERVABLE_ORDER = ("output", "grad_input", "grad_weight", "grad_bias", "running_mean", "running_var",
                    "num_batches_tracked", "weight", "bias")
#: Significant digits of errors, tolerances and ratios: the page prints 3.
TABLE_DIGITS = 3


_FORMATS = {d: f"%.{d}g" for d in range(1, 18)}


def _num(v, digits: int = TABLE_DIGITS):
    """Round for the embedded JSON (``digits`` significant digits; None for non-finite; bool/int/other as is)."""
    if type(v) is float:  # the common case first (hundreds of thousands of calls per report)
        return float(_FORMATS[digits] % v) if math.isfinite(v) else None
    if isinstance(v, float):  # a float subclass
        return _num(float(v), digits)
    return v


def _text(v) -> str | None:
    """A free-form record value as the page shows it (as text); None stays None."""
    return None if v is None else str(v)


def safe_url(url) -> str | None:
    """``url`` if it is an http(s) URL, else None (so no ``javascript:`` link is ever made)."""
    return url if isinstance(url, str) and re.match(r"(?i)^https?://", url) else None


def rerun_command(r: ResultRecord) -> str | None:
    """``tox -e ENV -- [--adapter TARGET] "NODEID"`` (shell-quoted differently if the node id needs it).

    A plug-in adapter's cell carries its ``--adapter`` target (without it the
    node id does not exist). Records written outside tox (env ``local``) get
    the plain pytest command instead.
    """
    if not r.nodeid:
        return None
    node = f'"{r.nodeid}"' if not re.search(r'["$`\\!]', r.nodeid) else shlex.quote(r.nodeid)
    if r.plugin_adapter:
        node = f"--adapter {shlex.quote(r.plugin_adapter)} {node}"
    if r.env == "local":
        return f"python -m pytest -p no:cacheprovider {node}"
    return f"tox -e {shlex.quote(r.env)} -- {node}"


@dataclass(frozen=True)
class Layout:
    """Row, column and cell order shared by the matrix and the embedded data.

    ``cases``: case id -> its first record in (theme, case file, case id) order
    (the row's title, behaviour, tags and sources); ``columns``: adapters by
    (framework, name); ``cells``: cell keys by row, then column.
    """

    cases: dict[str, ResultRecord]
    columns: list[str]
    framework_of: dict[str, str]
    cells: list[tuple[str, str]]

    @classmethod
    def of(cls, merged: Merged) -> "Layout":
        records = merged.records
        fw_of = {r.adapter: r.framework for r in records}
        columns = sorted(fw_of, key=lambda a: (fw_of[a], a))
        cases: dict[str, ResultRecord] = {}
        for r in sorted(records, key=lambda r: (r.theme, r.case_file, r.case_id)):
            cases.setdefault(r.case_id, r)
        row, col = {c: i for i, c in enumerate(cases)}, {a: i for i, a in enumerate(columns)}
        cells = sorted(merged.cells, key=lambda k: (row[k[0]], col[k[1]]))
        return cls(cases, columns, fw_of, cells)

    @property
    def case_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.cases)}

    @property
    def cell_index(self) -> dict[tuple[str, str], int]:
        return {k: i for i, k in enumerate(self.cells)}


def _observable(c: dict) -> str:
    return str(c.get("observable") or "")


class _Index(dict):
    """Value -> its index in :attr:`items` (each distinct value stored once)."""

    def __init__(self):
        super().__init__()
        self.items: list = []

    def of(self, key, value=None) -> int:
        """The index of ``key`` (hashable), appending ``value`` (default: ``key``) the first time."""
        k = self.get(key)
        if k is None:
            k = self[key] = len(self.items)
            self.items.append(key if value is None else value)
        return k


#: The columns of a :class:`~.contract.ComparisonTable` besides its layout and rows.
_NUMBERS = ("max_abs_err", "max_rel_err", "tol_at_worst", "ratio")


def _comparison_rows(cmps: list[dict]) -> list[tuple]:
    """Per comparison: (passed, the numbers of :data:`_NUMBERS` as the page shows them, message)."""
    return [(bool(c.get("passed")), *(_num(c.get(n)) for n in _NUMBERS), _text(c.get("message"))) for c in cmps]


def _comparison_table(cmps: list[dict], observable_index: dict[str, int], layouts: _Index,
                      base: tuple[int, list[tuple]] | None = None) -> tuple[dict, int, list[tuple]]:
    """A record's comparisons as a :class:`~.contract.ComparisonTable` (JSON values, default columns left
    out), its layout index and its rows. ``base``: the layout and rows of the cell's ``comparisons``: with
    the same layout, only the rows that differ from them are stored (``rows``)."""
    steps = tuple(c.get("step") for c in cmps)
    observables = tuple(observable_index[_observable(c)] for c in cmps)
    layout = layouts.of((steps, observables), {"step": list(steps), "observable": list(observables)})
    rows = _comparison_rows(cmps)
    table: dict = {"layout": layout}
    kept = rows
    if base is not None and base[0] == layout:
        which = [k for k, (row, other) in enumerate(zip(rows, base[1])) if row != other]
        table["rows"], kept = which, [rows[k] for k in which]
    columns = list(zip(*kept)) or [()] * (len(_NUMBERS) + 2)
    if not all(columns[0]):
        table["passed"] = list(columns[0])
    for n, name in enumerate(_NUMBERS, 1):
        table[name] = list(columns[n])
    if any(m is not None for m in columns[-1]):
        table["message"] = list(columns[-1])
    return table, layout, rows


def _channels(v) -> list | None:
    """A per-channel value as recorded (a list of numbers), else None (nothing to plot)."""
    if not isinstance(v, list) or not v:
        return None
    if not all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in v):
        return None
    return v


def _trajectories(cmps: list[dict], field: str) -> dict[str, dict[int, list]]:
    """``{observable: {step: channel values}}`` of ``field`` (``actual`` or ``expected``) of the running statistics."""
    out: dict[str, dict[int, list]] = {}
    for c in cmps:
        obs, step = c.get("observable"), c.get("step")
        if obs in TRAJECTORY_OBSERVABLES and isinstance(step, int):
            v = _channels(c.get(field))
            if v is not None:
                out.setdefault(obs, {}).setdefault(step, v)
    return out


def _trajectory_models(per_obs: dict[str, dict[int, list]]) -> list[dict]:
    """Plot data (:class:`~.contract.Trajectory` as JSON values): first :data:`PLOT_CHANNELS` channels,
    :data:`PLOT_DIGITS` significant digits, by step."""
    out = []
    for obs in TRAJECTORY_OBSERVABLES:
        steps = per_obs.get(obs)
        if steps:
            order = sorted(steps)
            out.append({"observable": obs, "channels": max(len(v) for v in steps.values()), "step": order,
                        "value": [[_num(x, PLOT_DIGITS) for x in steps[k][:PLOT_CHANNELS]] for k in order]})
    return out


def _reason(r: ResultRecord) -> dict:
    """``reason`` (text) and ``reason_cites_divergences`` of a cell: a quirk's or known bug's recorded reason
    starts with its divergences' ``id: summary`` list, which the page already has: only the rest is sent."""
    if not r.divergences:
        return {"reason": r.reason}
    cited = "; ".join(f"{d.get('id')}: {d.get('summary')}" for d in r.divergences)
    if (r.reason and r.reason.startswith(cited)
            and all(isinstance(d.get("id"), str) and isinstance(d.get("summary"), str) for d in r.divergences)):
        return {"reason": r.reason[len(cited):] or None, "reason_cites_divergences": True}
    return {"reason": r.reason, "reason_cites_divergences": False}


def _rerun(r: ResultRecord) -> str | None:
    """:func:`rerun_command`, or None when the page composes the same text from the env and the node id."""
    cmd = rerun_command(r)
    return None if r.nodeid and cmd == f'tox -e {r.env} -- "{r.nodeid}"' else cmd


#: A cell time the page can compose from its run's ``t0`` and a number of seconds.
_UTC_SECONDS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def _seconds(timestamp: str) -> int | None:
    """Seconds since the epoch of ``YYYY-MM-DDTHH:MM:SS+00:00``, else None (sent as recorded)."""
    if not _UTC_SECONDS.fullmatch(timestamp):
        return None
    try:
        return int(datetime.fromisoformat(timestamp).timestamp())
    except ValueError:
        return None


def _divergence_info(d: dict) -> dict:
    return {"id": _text(d.get("id")), "kind": _text(d.get("kind")), "summary": _text(d.get("summary")),
            "source": _text(d.get("source")), "source_url": safe_url(d.get("source")),
            "issue": _text(d.get("issue")), "issue_url": safe_url(d.get("issue")), "finding": _text(d.get("finding")),
            "options": d.get("options") or {}, "versions": _text(d.get("versions")),
            "observables": [str(o) for o in d.get("observables") or []], "raises": _text(d.get("raises")),
            "ref": _text(d.get("ref")), "max_ratio": d.get("max_ratio"), "derivation": _text(d.get("derivation"))}


def merge_marks(merged: Merged) -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], list[OtherRecord]]]:
    """Per cell reported by several shards: ``duplicate``/``conflict`` (conflict wins) and the other records."""
    marks: dict[tuple[str, str], str] = {}
    others: dict[tuple[str, str], list[OtherRecord]] = defaultdict(list)
    for kind, pairs in (("duplicate", merged.duplicates), ("conflict", merged.conflicts)):
        for a, b in pairs:
            if marks.get(a.cell) != "conflict":
                marks[a.cell] = kind
            others[a.cell].append(OtherRecord(kind=kind, verdict=b.verdict, env=b.env, version=b.framework_version,
                                              platform=b.platform, divergences=sorted(divergence_ids(b))))
    return marks, others


def _observable_names(merged: Merged) -> list[str]:
    seen = {_observable(c) for r in merged.cells.values() for c in (*r.comparisons, *r.canonical_comparisons)}
    seen |= {o for r in merged.cells.values() for o in r.not_observed}
    known = [o for o in OBSERVABLE_ORDER if o in seen]
    return known + sorted(seen - set(known))


def build_data(merged: Merged, layout: Layout, baseline_diff: Diff | None = None,
               plots_note: str | None = None) -> dict:
    """The ``#bn-data`` block: a :class:`~.contract.ReportData` as JSON values, each cell without the fields
    equal to their defaults; validated against the contract once, as a whole (:func:`~.contract.validate_data`).

    ``plots_note`` (why the page has no plots, e.g. ``--no-plots``): when set, no
    trajectories are embedded (the page draws nothing and says why); when None
    every cell carries the running statistics the page plots.
    """
    marks, others = merge_marks(merged)
    changes = baseline_diff.changed_cells() if baseline_diff else {}
    added = {(c, a) for c, a, _ in baseline_diff.added_cells} if baseline_diff else set()
    case_index, col_index = layout.case_index, {a: i for i, a in enumerate(layout.columns)}
    observables = _observable_names(merged)
    obs_index = {o: i for i, o in enumerate(observables)}
    divs, runs, layouts = _Index(), _Index(), _Index()
    reasons = [_Index() for _ in layout.columns]
    run_t0: dict[int, int] = {}
    adapter_runs: list[Counter] = [Counter() for _ in layout.columns]
    record_names: list[str | None] = [None] * len(layout.columns)
    case_steps: dict[str, dict[int, str]] = defaultdict(dict)
    case_oracle: dict[str, dict[str, dict[int, list]]] = defaultdict(dict)
    plots = plots_note is None
    for key in layout.cells:  # per case: each step's operation and the canonical oracle (the first cell with it)
        r = merged.cells[key]
        for c in (*r.comparisons, *r.canonical_comparisons):
            if isinstance(c.get("step"), int) and c.get("op") is not None:
                case_steps[r.case_id].setdefault(c["step"], str(c["op"]))
        if plots:
            for obs, steps in _trajectories(r.canonical_comparisons or r.comparisons, "expected").items():
                for step, v in steps.items():
                    case_oracle[r.case_id].setdefault(obs, {}).setdefault(step, v)
        run = runs.of((r.env, r.framework_version, r.python, r.platform, r.device))
        adapter_runs[col_index[r.adapter]][run] += 1
        t = _seconds(r.timestamp)
        if t is not None and (run not in run_t0 or t < run_t0[run]):
            run_t0[run] = t
    oracle_plots = {c: _trajectory_models(o) for c, o in case_oracle.items()}
    adapter_run = [n.most_common(1)[0][0] for n in adapter_runs]
    cells: list[dict] = []
    for key in layout.cells:
        r = merged.cells[key]
        col = col_index[r.adapter]
        cell: dict = {"case": case_index[r.case_id], "adapter": col, "verdict": r.verdict}
        why = _reason(r)
        if why["reason"] is not None:
            cell["reason"] = reasons[col].of(why["reason"])
        if not why.get("reason_cites_divergences", True):
            cell["reason_cites_divergences"] = False
        if r.divergences:
            cell["divergences"] = [divs.of(json.dumps(d, sort_keys=True, default=str), _divergence_info(d))
                                   for d in r.divergences]
        base = None
        if r.comparisons:
            cell["comparisons"], *base = _comparison_table(r.comparisons, obs_index, layouts)
        if r.canonical_comparisons:
            cell["canonical_comparisons"], _, _ = _comparison_table(r.canonical_comparisons, obs_index, layouts, base)
        if plots:
            alt = []
            if r.canonical_comparisons:  # compared against the oracle with the cell's divergences
                alt = [t for t in _trajectory_models(_trajectories(r.comparisons, "expected"))
                       if t not in oracle_plots.get(r.case_id, [])]
            judged = {t["observable"]: t for t in oracle_plots.get(r.case_id, [])} | {t["observable"]: t for t in alt}
            trajectories = [t["observable"] if judged.get(t["observable"]) == t else t
                            for t in _trajectory_models(_trajectories(r.comparisons, "actual"))]
            if trajectories:
                cell["trajectories"] = trajectories
            if alt:
                cell["oracle_trajectories"] = alt
        if r.not_observed:
            cell["not_observed"] = [obs_index[o] for o in r.not_observed]
        run = runs[(r.env, r.framework_version, r.python, r.platform, r.device)]
        if run != adapter_run[col]:
            cell["run"] = run
        t = _seconds(r.timestamp)
        cell["timestamp"] = r.timestamp if t is None else t - run_t0[run]
        if r.duration_s is not None:
            cell["duration_s"] = _num(r.duration_s, 3)
        if r.nodeid != f"{r.case_file}::{r.case_id}[{r.adapter}]":
            # a version column (``adapter @ version``): its records' node ids name the adapter
            base = r.adapter.removesuffix(f" @ {r.framework_version}")
            if (record_names[col] in (None, base) and version_label(base, r.framework_version) == r.adapter
                    and r.nodeid == f"{r.case_file}::{r.case_id}[{base}]"):
                record_names[col] = base
            else:
                cell["nodeid"] = r.nodeid
        rerun = _rerun(r)
        if rerun is not None:
            cell["rerun"] = rerun
        if key in marks:
            cell["mark"] = marks[key]
            cell["others"] = [o.model_dump(mode="json") for o in others.get(key, [])]
        ch = changes.get(key)
        if ch:
            cell["baseline"] = {"verdict": ch.old_verdict, "divergences": list(ch.old_divergences),
                                "framework_version": ch.old_version}
        elif key in added:
            cell["baseline"] = {"verdict": None, "divergences": [], "framework_version": None}
        cells.append(to_wire(cell, Cell))

    def steps(case_id: str) -> list[str]:
        ops = case_steps.get(case_id, {})
        return [ops.get(k, "") for k in range(max(ops) + 1)] if ops else []

    def iso(seconds: int) -> str:
        return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")

    return validate_data({
        "contract": CONTRACT_VERSION,
        "cases": [{"id": c, "title": r.title, "behaviour": r.behaviour, "theme": r.theme, "tags": list(r.tags),
                   "file": r.case_file,
                   "sources": [{"title": _text(s.get("title")), "url": safe_url(s.get("url")),
                                "file": _text(s.get("file"))} for s in r.sources],
                   "steps": steps(c), "oracle": [to_wire(t, Trajectory) for t in oracle_plots.get(c, [])]}
                  for c, r in layout.cases.items()],
        "adapters": [{"name": a, "framework": layout.framework_of[a], "reasons": reasons[n].items,
                      "run": adapter_run[n], "record_name": record_names[n]} for n, a in enumerate(layout.columns)],
        "divergences": divs.items,
        "runs": [{"env": e, "framework_version": v, "python": py, "platform": pl, "device": dev,
                  "t0": iso(run_t0[n]) if n in run_t0 else None}
                 for n, (e, v, py, pl, dev) in enumerate(runs.items)],
        "observables": observables, "layouts": layouts.items, "cells": cells, "glyphs": GLYPHS,
        "cell_defaults": cell_defaults(), "field_names": field_names(), "plots_note": plots_note})
