"""The template's view model: what ``parity.html.j2`` renders, as plain Python values.

:func:`build_context` returns the template's variables (below); the drill-down
data goes in ``data`` (:class:`~.contract.ReportData` as JSON values;
``plots`` says whether the page inlines the plotting library and draws from it).
The matrices are rendered server-side:

``themes`` / ``by_source``
    rows grouped by theme, and by source thread (:func:`source_groups`); a row
    is ``{id, title, behaviour, tags (space-separated), new, cells}`` with one
    entry per column, None where the adapter has no record of the case, else
    ``{v: verdict, g: glyph, i: index into data.cells, mark, changed}`` (the page
    script gives a cell its tooltip from the data when the pointer or focus reaches it).
``questions``
    per source group and adapter, the count of each verdict (worst first), the
    worst one (the cell's colour) and the divergence ids shown (the page script
    gives a cell its tooltip, each case's verdict, from the data and the group's
    rows in the by-source matrix).
``columns``, ``framework_spans``
    adapters ``{name, framework, new}`` and ``[framework, number of its columns]``.
``diff``, ``conflicts``, ``duplicates``, ``bad_lines``
    the results layer's objects (:mod:`bnconform.resultset`), rendered as they are.
``run_notices``
    one line per shard that is not a complete run (:func:`run_notices`).
``explored``
    the exploration summaries merged (:class:`~.explored.Explored`; no runs when none was given).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from ..results import VERDICTS, ResultRecord
from ..resultset import Diff, Merged, divergence_ids
from .contract import WIRE_KEYS
from .data import GLYPHS, Layout, build_data, safe_url
from .explored import Explored

#: Worst first: the colour a group of cells takes in the summary views.
SEVERITY = ("error", "fails", "known_bug", "quirk", "conforms", "unsupported")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _common_label(titles: list[str]) -> str:
    """Shared prefix of a source group's titles, cut at a word boundary."""
    if len(titles) == 1:
        return titles[0]
    prefix = titles[0]
    for t in titles[1:]:
        while not t.startswith(prefix):
            prefix = prefix[:-1]
    bounds = " ,(:;\u2014-[]"
    if not all(len(t) == len(prefix) or t[len(prefix)] in bounds for t in titles):
        prefix = re.sub(r"[^\s,(:;\u2014\-\[\]]*$", "", prefix)  # cut the partial word
    if prefix.count("(") > prefix.count(")"):  # never end inside a parenthesis
        prefix = prefix[:prefix.rindex("(")]
    prefix = prefix.rstrip(bounds)
    return prefix if len(prefix) >= 8 else titles[0]


def source_groups(records: list[ResultRecord]) -> list[dict]:
    """Group cases by source thread: seed file, else URL, else title.

    Returns ``[{key, label, kind, file, url, titles, cases}]``: seed-file
    threads first, then by label; a case citing several sources is in several.
    """
    groups: dict[str, dict] = {}
    for r in records:
        srcs = r.sources or [{"title": "(no source given)"}]
        for s in srcs:
            title = str(s.get("title") or s.get("url") or s.get("file") or "(untitled)")
            if s.get("file"):
                key, kind = "file:" + str(s["file"]), "seed thread"
            elif s.get("url"):
                key, kind = "url:" + str(s["url"]), "reference"
            else:
                key, kind = "title:" + title, "reference"
            g = groups.setdefault(key, {"key": key, "kind": kind, "file": s.get("file"),
                                        "url": safe_url(s.get("url")), "titles": [], "cases": []})
            if title not in g["titles"]:
                g["titles"].append(title)
            if r.case_id not in g["cases"]:
                g["cases"].append(r.case_id)
    for g in groups.values():
        g["label"] = _common_label(sorted(g["titles"]))
        if g["file"]:
            g["label"] = f"{g['label']} [{g['file']}]"
    return sorted(groups.values(), key=lambda g: (g["file"] is None, g["file"] or "", g["label"].lower()))


def worst(verdicts) -> str | None:
    """The most severe of ``verdicts`` (:data:`SEVERITY` order); None if empty."""
    vs = set(verdicts)
    return next((v for v in SEVERITY if v in vs), None)


def run_notices(merged: Merged) -> list[str]:
    """One line per shard that is not a complete run of the whole catalogue
    (incomplete, interrupted, partial, legacy without a manifest): the
    matrix shows what was measured, these say what was not."""
    out = []
    for shard in merged.shards:
        status = shard.status()
        if status and not shard.legacy and shard.collected is not None:
            missing = len(shard.missing_records())
            if missing and "have no record" not in status:
                status += f"; {missing} of {len(shard.collected.cells)} collected cell(s) have no record"
        if shard.collected is not None and shard.collected.partial:
            status = (status + "; " if status else "") + (
                f"partial run: {len(shard.collected.cells)} of {shard.collected.full} cells selected")
        if status:
            out.append(f"{shard.file}: {status}")
    return out


def _framework_spans(layout: Layout) -> list[list]:
    spans: list[list] = []
    for a in layout.columns:
        fw = layout.framework_of[a]
        if spans and spans[-1][0] == fw:
            spans[-1][1] += 1
        else:
            spans.append([fw, 1])
    return spans


def _questions(merged: Merged, layout: Layout, by_source: list[dict]) -> list[dict]:
    """Divergence by question: per source group and adapter, the verdicts of its cases."""
    questions = []
    for g in by_source:
        qcells = []
        for a in layout.columns:
            recs = [merged.cells[(c, a)] for c in g["cases"] if (c, a) in merged.cells]
            cnt = Counter(r.verdict for r in recs)
            dids = sorted({i for r in recs for i in divergence_ids(r)})
            qcells.append({"worst": worst(cnt), "counts": [(v, GLYPHS[v], cnt[v]) for v in SEVERITY if cnt[v]],
                           "divergences": dids} if recs else None)
        questions.append({"label": g["label"], "kind": g["kind"], "url": g["url"], "titles": g["titles"],
                          "anchor": g["anchor"], "n": len(g["cases"]), "cells": qcells})
    return questions


def build_context(merged: Merged, title: str = "bnconform parity report", baseline_diff: Diff | None = None,
                  baseline_label: str | None = None, plots_note: str | None = None,
                  explored: Explored | None = None) -> dict:
    """The template's variables: header facts, matrices, summary views, embedded data (module docstring).

    ``plots_note``: why the page has no plots (None: it draws them from the embedded numbers).
    """
    records = merged.records
    layout = Layout.of(merged)
    data = build_data(merged, layout, baseline_diff, plots_note)
    cell_index = layout.cell_index
    changes = baseline_diff.changed_cells() if baseline_diff else {}
    added = {(c, a) for c, a, _ in baseline_diff.added_cells} if baseline_diff else set()
    new_cases = set(baseline_diff.new_cases) if baseline_diff else set()
    new_adapters = set(baseline_diff.new_adapters) if baseline_diff else set()

    def cell_view(case_id, adapter):
        key = (case_id, adapter)
        r = merged.cells.get(key)
        if r is None:
            return None
        changed = key in changes or key in added or case_id in new_cases or adapter in new_adapters
        return {"v": r.verdict, "g": GLYPHS[r.verdict], "i": cell_index[key], "mark": data["cells"][cell_index[key]].get(WIRE_KEYS["mark"]),
                "changed": changed}

    def row(case_id):
        meta = layout.cases[case_id]
        return {"id": case_id, "title": meta.title, "behaviour": meta.behaviour, "tags": " ".join(meta.tags),
                "new": case_id in new_cases, "cells": [cell_view(case_id, a) for a in layout.columns]}

    themes: dict[str, list] = {}
    for case_id, meta in layout.cases.items():
        themes.setdefault(meta.theme, []).append(row(case_id))
    by_source = [{**g, "anchor": f"src-{n}", "rows": [row(c) for c in g["cases"]]}
                 for n, g in enumerate(source_groups(list(layout.cases.values())))]
    fw_of = layout.framework_of
    by_adapter = Counter((ad, r.verdict) for (_, ad), r in merged.cells.items())  # one pass, not one per column
    per_adapter = [{"adapter": a, "framework": fw_of[a], "counts": [by_adapter[(a, v)] for v in VERDICTS]}
                   for a in layout.columns]
    counts = merged.counts()
    stamps = sorted(r.timestamp for r in records)
    commits = sorted({str(r.commit) for r in records if r.commit})
    return {
        "title": title,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": ", ".join(commits) if commits else _git_commit(),
        "commit_from_records": bool(commits),
        "run_span": (stamps[0], stamps[-1]) if stamps else None,
        "counts": [(v, counts.get(v, 0)) for v in VERDICTS],
        "total": len(merged.cells),
        "verdicts": VERDICTS,
        "glyphs": GLYPHS,
        "environments": sorted({(r.framework, r.framework_version, r.env, r.python, r.platform, r.device)
                                for r in records}),
        "frameworks": sorted({(r.framework, r.framework_version) for r in records}),
        "pythons": sorted({r.python for r in records}),
        "platforms": sorted({r.platform for r in records}),
        "devices": sorted({r.device for r in records}),
        "per_adapter": per_adapter,
        "columns": [{"name": a, "framework": fw_of[a], "new": a in new_adapters} for a in layout.columns],
        "framework_spans": _framework_spans(layout),
        "framework_names": sorted(set(fw_of.values())),
        "tags": sorted({t for r in layout.cases.values() for t in r.tags}),
        "themes": themes,
        "by_source": by_source,
        "questions": _questions(merged, layout, by_source),
        "data": data,
        "plots": plots_note is None,
        "duplicates": merged.duplicates,
        "conflicts": merged.conflicts,
        "bad_lines": merged.bad_lines,
        "run_notices": run_notices(merged),
        "diff": baseline_diff,
        "baseline_label": baseline_label,
        "explored": explored or Explored(),
    }
