"""The self-contained HTML parity report, built from merged result shards.

One job per module:

:mod:`.view`
    the template's view model (matrices, summary views, header facts);
:mod:`.contract`
    the JSON the page script reads (pydantic models with every field documented);
:mod:`.data`
    fills that contract from merged records (and the rerun command of a cell);
:mod:`.explored`
    the "Explored" view: ``bnconform explore`` summaries read and validated (``--explored DIR``);
:mod:`.render`
    Jinja2 rendering (autoescape on) of ``bnconform/templates``, with the plotting
    library (uPlot, ``templates/vendor/``) inlined: the page draws its plots from the
    embedded numbers when a cell is drilled down.

Merging and diffing are the results layer's (:mod:`bnconform.resultset`); the
gate imports that, never this package. This module holds the entry point the
CLI uses (:func:`write_report`) and the machine-readable :func:`summary`, and
re-exports the names callers used when the report was one module.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..results import FAILING
from ..resultset import (  # noqa: F401  (re-exported for callers of the old location)
    CellChange, Diff, Merged, diff, divergence_ids, load_and_merge, merge, version_label)
from .data import GLYPHS, rerun_command  # noqa: F401
from .explored import Explored, load_explored
from .render import render
from .view import SEVERITY, build_context, run_notices, source_groups, worst  # noqa: F401

__all__ = ["write_report", "render", "summary", "build_context", "Explored", "load_explored",
           "rerun_command", "run_notices", "source_groups", "worst", "GLYPHS", "SEVERITY",
           # the results layer's, re-exported for callers of the old one-module report
           "CellChange", "Diff", "Merged", "diff", "divergence_ids", "load_and_merge", "merge", "version_label"]


def summary(merged: Merged, baseline_diff: Diff | None = None) -> dict:
    """Machine-readable summary for CI systems (``bnconform report --summary``)."""
    out = {
        "counts": dict(merged.counts()),
        "cells": len(merged.cells),
        "failing": [{"case": r.case_id, "adapter": r.adapter, "verdict": r.verdict, "reason": r.reason}
                    for r in merged.records if r.verdict in FAILING],
        "conflicts": [{"case": a.case_id, "adapter": a.adapter, "verdicts": [a.verdict, b.verdict],
                       "envs": [a.env, b.env]} for a, b in merged.conflicts],
        "duplicates": len(merged.duplicates),
        "bad_lines": [str(b) for b in merged.bad_lines],
        "run_notices": run_notices(merged),
    }
    if baseline_diff is not None:
        out["baseline_diff"] = baseline_diff.to_dict()
    return out


def write_report(paths: list[str | Path], out: str | Path, summary_path: str | Path | None = None,
                 baseline: list[str | Path] | None = None, plots: bool = True,
                 explored: list[str | Path] | Explored | None = None) -> tuple[Merged, Diff | None]:
    """Read, merge, (diff), render; write the HTML (and the summary JSON if asked).

    ``paths``/``baseline``: result files or directories of ``*.jsonl``
    (``FileNotFoundError`` if one does not exist). ``plots``: embed the running
    statistics and the plotting library so that the page draws each case's plots
    (False: a smaller page without plots). ``explored``: directories of
    ``bnconform explore`` summaries (``explore-*.json``) or such files, for the
    page's "Explored" view (a path without any is said so there, not an
    error), or what :func:`load_explored` read from them. Returns the merged results and the diff against the baseline (None
    without one).
    """
    merged = load_and_merge(paths)
    base_diff = diff(load_and_merge(baseline), merged) if baseline else None
    label = ", ".join(map(str, baseline)) if baseline else None
    page = render(merged, baseline_diff=base_diff, baseline_label=label, plots=plots,
                  explored=load_explored(explored) if isinstance(explored, list) else explored)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if summary_path:
        Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_path).write_text(json.dumps(summary(merged, base_diff), indent=2), encoding="utf-8")
    return merged, base_diff
