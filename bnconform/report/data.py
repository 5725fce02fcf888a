"""Build the page's embedded data (the ``#bn-data`` and ``#bn-figs`` blocks) from merged records.

The shapes are :mod:`bnconform.report.contract`; this module only fills them:
rounding numbers, keeping http(s) URLs only, storing each divergence once,
turning a record's comparison list into a :class:`~.contract.ComparisonTable`.
:class:`Layout` fixes the order of rows (cases), columns (adapters) and cells
that the matrix and the data share (a matrix cell's ``data-i`` is its index
in ``ReportData.cells``).
"""

from __future__ import annotations

import base64
import json
import math
import re
import shlex
from collections import defaultdict
from dataclasses import dataclass

from ..results import ResultRecord
from ..resultset import Diff, Merged, divergence_ids
from .contract import (FIGURES, AdapterInfo, BaselineCell, CaseInfo, Cell, ComparisonTable, DivergenceInfo,
                       OtherRecord, ReportData, Source)

#: One glyph per verdict so the matrix reads without colour too.
GLYPHS = {"conforms": "\u2713", "quirk": "Q", "known_bug": "B", "fails": "\u2717",
          "unsupported": "\u2013", "error": "!"}


def _num(v, digits: int = 4):
    """Round for the embedded JSON (4 significant digits; None for non-finite)."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return None
        return float(f"{v:.{digits}g}") if isinstance(v, float) else v
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


def _comparison_table(cmps: list[dict]) -> ComparisonTable | None:
    if not cmps:
        return None
    return ComparisonTable(
        step=[c.get("step") for c in cmps], op=[_text(c.get("op")) for c in cmps],
        observable=[_text(c.get("observable")) for c in cmps], passed=[bool(c.get("passed")) for c in cmps],
        max_abs_err=[_num(c.get("max_abs_err")) for c in cmps], max_rel_err=[_num(c.get("max_rel_err")) for c in cmps],
        tol_at_worst=[_num(c.get("tol_at_worst")) for c in cmps], ratio=[_num(c.get("ratio")) for c in cmps],
        headroom=[_num(c.get("headroom")) for c in cmps], message=[_text(c.get("message")) for c in cmps])


def _divergence_info(d: dict) -> DivergenceInfo:
    return DivergenceInfo(
        id=_text(d.get("id")), kind=_text(d.get("kind")), summary=_text(d.get("summary")),
        source=_text(d.get("source")), source_url=safe_url(d.get("source")),
        issue=_text(d.get("issue")), issue_url=safe_url(d.get("issue")), finding=_text(d.get("finding")),
        options=d.get("options") or {}, versions=_text(d.get("versions")),
        observables=[str(o) for o in d.get("observables") or []], raises=_text(d.get("raises")),
        ref=_text(d.get("ref")), max_ratio=d.get("max_ratio"), derivation=_text(d.get("derivation")))


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


def build_data(merged: Merged, layout: Layout, baseline_diff: Diff | None = None,
               plots_note: str | None = None) -> ReportData:
    """The ``#bn-data`` block (:class:`~.contract.ReportData`), validated on construction."""
    marks, others = merge_marks(merged)
    changes = baseline_diff.changed_cells() if baseline_diff else {}
    added = {(c, a) for c, a, _ in baseline_diff.added_cells} if baseline_diff else set()
    case_index, col_index = layout.case_index, {a: i for i, a in enumerate(layout.columns)}
    div_index: dict[str, int] = {}
    divs: list[DivergenceInfo] = []
    cells: list[Cell] = []
    for key in layout.cells:
        r = merged.cells[key]
        ids = []
        for d in r.divergences:
            k = json.dumps(d, sort_keys=True, default=str)
            if k not in div_index:
                div_index[k] = len(divs)
                divs.append(_divergence_info(d))
            ids.append(div_index[k])
        ch = changes.get(key)
        baseline = (BaselineCell(verdict=ch.old_verdict, divergences=list(ch.old_divergences),
                                 framework_version=ch.old_version) if ch
                    else BaselineCell(verdict=None, divergences=[], framework_version=None) if key in added
                    else None)
        cells.append(Cell(
            case=case_index[r.case_id], adapter=col_index[r.adapter], verdict=r.verdict, reason=r.reason,
            divergences=ids, comparisons=_comparison_table(r.comparisons),
            canonical_comparisons=_comparison_table(r.canonical_comparisons), not_observed=r.not_observed,
            framework_version=r.framework_version, device=r.device, env=r.env, python=r.python,
            platform=r.platform, timestamp=r.timestamp, duration_s=_num(r.duration_s, 3), nodeid=r.nodeid,
            rerun=rerun_command(r), mark=marks.get(key), others=others.get(key, []), baseline=baseline))
    return ReportData(
        cases=[CaseInfo(id=c, title=r.title, behaviour=r.behaviour, theme=r.theme, tags=r.tags, file=r.case_file,
                        sources=[Source(title=_text(s.get("title")), url=safe_url(s.get("url")),
                                        file=_text(s.get("file"))) for s in r.sources])
               for c, r in layout.cases.items()],
        adapters=[AdapterInfo(name=a, framework=layout.framework_of[a]) for a in layout.columns],
        divergences=divs, cells=cells, glyphs=GLYPHS, plots_note=plots_note)


def encode_figures(figures: dict[str, str] | None, layout: Layout) -> dict[str, str]:
    """The ``#bn-figs`` block (:data:`~.contract.FIGURES`): base64 of each case's SVG by case index.

    base64 is safe by construction inside JSON and is shown through ``<img src="data:...">``.
    """
    index = layout.case_index
    figs = {str(index[c]): base64.b64encode(svg.encode("utf-8")).decode("ascii")
            for c, svg in (figures or {}).items() if c in index}
    return FIGURES.validate_python(figs)
