"""Merge result shards and render the self-contained HTML parity report.

Shards come from several tox envs and machines (``reports/results/*.jsonl``).
Merging never silently overwrites: the same cell (case, adapter) reported
twice with the same verdict is a ``duplicate``; with different verdicts a
``conflict``. Both are listed in the report; the matrix shows the first record
and marks the cell.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from .results import VERDICTS, BadLine, ResultRecord, read_results


@dataclass
class Merged:
    """Result of merging shards: one record per cell plus what did not merge cleanly."""

    cells: dict[tuple[str, str], ResultRecord] = field(default_factory=dict)
    duplicates: list[tuple[ResultRecord, ResultRecord]] = field(default_factory=list)
    conflicts: list[tuple[ResultRecord, ResultRecord]] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)

    @property
    def records(self) -> list[ResultRecord]:
        return list(self.cells.values())

    def counts(self) -> Counter:
        return Counter(r.verdict for r in self.cells.values())


def merge(records: list[ResultRecord], bad_lines: list[BadLine] | None = None) -> Merged:
    """Merge records into one per (case_id, adapter); see module docstring."""
    out = Merged(bad_lines=list(bad_lines or []))
    for r in records:
        first = out.cells.get(r.cell)
        if first is None:
            out.cells[r.cell] = r
        elif first.verdict == r.verdict and first.framework_version == r.framework_version:
            out.duplicates.append((first, r))
        else:
            out.conflicts.append((first, r))
    return out


def load_and_merge(paths: list[str | Path]) -> Merged:
    """Read result files/directories and merge them (bad lines are kept, not fatal)."""
    records, bad = read_results(paths)
    return merge(records, bad)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def build_context(merged: Merged, title: str = "bnconform parity report") -> dict:
    """The template's view model: header facts, themes x adapters matrix, cell details."""
    records = merged.records
    adapters = sorted({(r.framework, r.adapter) for r in records})
    columns = [a for _, a in adapters]
    themes: "OrderedDict[str, OrderedDict[str, ResultRecord]]" = OrderedDict()
    for r in sorted(records, key=lambda r: (r.theme, r.case_file)):
        themes.setdefault(r.theme, OrderedDict()).setdefault(r.case_id, r)
    marked = {a.cell for a, _ in merged.duplicates} | {a.cell for a, _ in merged.conflicts}
    cell_ids = {cell: f"cell-{n}" for n, cell in enumerate(sorted(merged.cells))}
    environments = sorted({(r.framework, r.framework_version, r.env, r.python, r.platform, r.device) for r in records})
    rows = []
    for theme, cases in themes.items():
        for case_id, meta in cases.items():
            cells = []
            for adapter in columns:
                rec = merged.cells.get((case_id, adapter))
                cells.append({"record": rec, "anchor": cell_ids.get((case_id, adapter)),
                              "marked": (case_id, adapter) in marked})
            rows.append({"theme": theme, "case": meta, "cells": cells})
    return {
        "title": title,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "counts": [(v, merged.counts().get(v, 0)) for v in VERDICTS],
        "environments": environments,
        "columns": columns,
        "rows": rows,
        "details": [(cell_ids[cell], rec) for cell, rec in sorted(merged.cells.items())],
        "duplicates": merged.duplicates,
        "conflicts": merged.conflicts,
        "bad_lines": merged.bad_lines,
        "fmt": _fmt,
    }


def render(merged: Merged, title: str = "bnconform parity report") -> str:
    """Render the report HTML (Jinja2, autoescaped: no text from results can inject markup)."""
    env = Environment(loader=PackageLoader("bnconform", "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("parity.html.j2").render(**build_context(merged, title))


def summary(merged: Merged) -> dict:
    """Machine-readable summary for CI systems."""
    return {
        "counts": dict(merged.counts()),
        "cells": len(merged.cells),
        "failing": [{"case": r.case_id, "adapter": r.adapter, "verdict": r.verdict, "reason": r.reason}
                    for r in merged.records if r.verdict in ("fails", "error")],
        "conflicts": [{"case": a.case_id, "adapter": a.adapter, "verdicts": [a.verdict, b.verdict],
                       "envs": [a.env, b.env]} for a, b in merged.conflicts],
        "duplicates": len(merged.duplicates),
        "bad_lines": [str(b) for b in merged.bad_lines],
    }


def write_report(paths: list[str | Path], out: str | Path, summary_path: str | Path | None = None) -> Merged:
    """Read, merge, render; write the HTML (and the summary JSON if asked)."""
    merged = load_and_merge(paths)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(merged), encoding="utf-8")
    if summary_path:
        Path(summary_path).write_text(json.dumps(summary(merged), indent=2), encoding="utf-8")
    return merged
