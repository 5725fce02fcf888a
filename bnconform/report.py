"""Merge result shards, diff against a baseline, render the self-contained HTML parity report.

Shards come from several tox envs and machines (``reports/results/*.jsonl``).
Merging never silently overwrites: the same cell (case, adapter) reported
twice with the same verdict, framework version and divergence set is a
``duplicate``; otherwise a ``conflict``. Both are listed in the report; the
matrix shows the first record read and marks the cell.

:func:`diff` compares two merged runs (baseline, current) cell by cell: verdict
or divergence-set changes, new/removed cases, adapters and cells. The gate and
``bnconform report --baseline`` use it; ``Diff.text()`` is its readable form.

The HTML is one file: the matrix is rendered by Jinja2 (autoescape on); the
drill-down data is embedded once as JSON (``tojson`` inside
``<script type="application/json">``) and turned into DOM nodes with
``textContent``; plots are matplotlib (Agg) SVGs embedded as text and shown
through ``<img>`` elements, so nothing in a figure can run script either.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import os
import re
import shlex
import subprocess
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from .results import FAILING, VERDICTS, BadLine, ResultRecord, read_results

#: Worst first: the colour a group of cells takes in the summary views.
SEVERITY = ("error", "fails", "known_bug", "quirk", "conforms", "unsupported")
#: One glyph per verdict so the matrix reads without colour too.
GLYPHS = {"conforms": "\u2713", "quirk": "Q", "known_bug": "B", "fails": "\u2717",
          "unsupported": "\u2013", "error": "!"}
#: Observables with one value per channel whose trajectories over steps are plotted.
TRAJECTORY_OBSERVABLES = ("running_mean", "running_var")
#: Channels drawn per trajectory (the rest are summarised in the title).
PLOT_CHANNELS = 4


# --------------------------------------------------------------------------- merge

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

    @property
    def case_ids(self) -> set[str]:
        return {c for c, _ in self.cells}

    @property
    def adapters(self) -> set[str]:
        return {a for _, a in self.cells}


def divergence_ids(record: ResultRecord) -> frozenset[str]:
    """The ids of the documented divergences a record shows (its "divergence set")."""
    return frozenset(str(d.get("id")) for d in record.divergences)


def version_label(adapter: str, version: str) -> str:
    """Column label of an adapter when several versions of it are merged (tox version factors)."""
    return f"{adapter} @ {version}"


def merge(records: list[ResultRecord], bad_lines: list[BadLine] | None = None) -> Merged:
    """Merge records into one per (case_id, adapter); see module docstring.

    When one adapter comes in several framework versions (e.g. the ``torch``
    and ``torch214`` envs), each version becomes its own column
    (:func:`version_label`), so versions sit side by side instead of
    conflicting. Otherwise the first record read for a cell wins; a later one
    is a duplicate when verdict, framework version and divergence set agree,
    else a conflict.
    """
    versions: dict[str, set[str]] = defaultdict(set)
    for r in records:
        versions[r.adapter].add(r.framework_version)
    out = Merged(bad_lines=list(bad_lines or []))
    for r in records:
        if len(versions[r.adapter]) > 1:
            r = r.model_copy(update={"adapter": version_label(r.adapter, r.framework_version)})
        first = out.cells.get(r.cell)
        if first is None:
            out.cells[r.cell] = r
        elif (first.verdict == r.verdict and first.framework_version == r.framework_version
              and divergence_ids(first) == divergence_ids(r)):
            out.duplicates.append((first, r))
        else:
            out.conflicts.append((first, r))
    return out


def load_and_merge(paths: list[str | Path]) -> Merged:
    """Read result files/directories and merge them (bad lines are kept, not fatal)."""
    records, bad = read_results(paths)
    return merge(records, bad)


# --------------------------------------------------------------------------- diff

@dataclass(frozen=True)
class CellChange:
    """One cell present in both runs whose verdict or divergence set changed."""

    case_id: str
    adapter: str
    old_verdict: str
    new_verdict: str
    old_divergences: tuple[str, ...]
    new_divergences: tuple[str, ...]
    old_version: str
    new_version: str

    @property
    def regression(self) -> bool:
        """Newly failing: the gate's business."""
        return self.new_verdict in FAILING and self.old_verdict not in FAILING

    @property
    def fixed(self) -> bool:
        return self.old_verdict in FAILING and self.new_verdict not in FAILING

    def text(self) -> str:
        s = f"{self.case_id} on {self.adapter}: {self.old_verdict} -> {self.new_verdict}"
        if self.old_divergences != self.new_divergences:
            s += f"; divergences [{', '.join(self.old_divergences)}] -> [{', '.join(self.new_divergences)}]"
        if self.old_version != self.new_version:
            s += f" (version {self.old_version} -> {self.new_version})"
        return s

    def to_dict(self) -> dict:
        return {"case": self.case_id, "adapter": self.adapter, "old_verdict": self.old_verdict,
                "new_verdict": self.new_verdict, "old_divergences": list(self.old_divergences),
                "new_divergences": list(self.new_divergences), "old_version": self.old_version,
                "new_version": self.new_version, "regression": self.regression}


@dataclass
class Diff:
    """What changed between a baseline run and the current one (see :func:`diff`).

    ``added_cells``/``removed_cells`` list only cells whose case AND adapter
    exist in both runs (a cell of a new case or adapter is implied by it).
    """

    changed: list[CellChange] = field(default_factory=list)
    new_cases: list[str] = field(default_factory=list)
    removed_cases: list[str] = field(default_factory=list)
    new_adapters: list[str] = field(default_factory=list)
    removed_adapters: list[str] = field(default_factory=list)
    added_cells: list[tuple[str, str, str]] = field(default_factory=list)    # (case, adapter, verdict)
    removed_cells: list[tuple[str, str, str]] = field(default_factory=list)  # (case, adapter, old verdict)
    version_changes: list[tuple[str, str, str]] = field(default_factory=list)  # (adapter, old, new)

    @property
    def empty(self) -> bool:
        return not (self.changed or self.new_cases or self.removed_cases or self.new_adapters
                    or self.removed_adapters or self.added_cells or self.removed_cells)

    @property
    def regressions(self) -> list[CellChange]:
        return [c for c in self.changed if c.regression]

    def changed_cells(self) -> dict[tuple[str, str], CellChange]:
        return {(c.case_id, c.adapter): c for c in self.changed}

    def text(self) -> str:
        """Readable, stable rendering (one fact per line; empty diff -> one line)."""
        if self.empty and not self.version_changes:
            return "no change against the baseline"
        lines = []

        def block(title, items):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  {i}" for i in items)

        block("version changes", [f"{a}: {o} -> {n}" for a, o, n in self.version_changes])
        block("changed cells", [("REGRESSION " if c.regression else "") + c.text() for c in self.changed])
        block("new cases", self.new_cases)
        block("removed cases", self.removed_cases)
        block("new adapters", self.new_adapters)
        block("removed adapters", self.removed_adapters)
        block("new cells", [f"{c} on {a}: {v}" for c, a, v in self.added_cells])
        block("removed cells", [f"{c} on {a}: was {v}" for c, a, v in self.removed_cells])
        return "\n".join(lines)

    __str__ = text

    def to_dict(self) -> dict:
        return {"changed": [c.to_dict() for c in self.changed], "new_cases": self.new_cases,
                "removed_cases": self.removed_cases, "new_adapters": self.new_adapters,
                "removed_adapters": self.removed_adapters,
                "added_cells": [list(c) for c in self.added_cells],
                "removed_cells": [list(c) for c in self.removed_cells],
                "version_changes": [list(v) for v in self.version_changes],
                "regressions": len(self.regressions)}


def diff(baseline: Merged, current: Merged) -> Diff:
    """Every difference between two merged runs that a reviewer must see.

    A cell present in both changes when its verdict or its divergence set
    (ids of the documented divergences shown) differs; a framework version
    change alone is listed under ``version_changes``, not as a cell change.
    """
    out = Diff()
    old_cases, new_cases = baseline.case_ids, current.case_ids
    old_adapters, new_adapters = baseline.adapters, current.adapters
    out.new_cases = sorted(new_cases - old_cases)
    out.removed_cases = sorted(old_cases - new_cases)
    out.new_adapters = sorted(new_adapters - old_adapters)
    out.removed_adapters = sorted(old_adapters - new_adapters)
    both_cases, both_adapters = old_cases & new_cases, old_adapters & new_adapters
    for key in sorted(set(baseline.cells) | set(current.cells)):
        case, adapter = key
        old, new = baseline.cells.get(key), current.cells.get(key)
        if old and new:
            od, nd = tuple(sorted(divergence_ids(old))), tuple(sorted(divergence_ids(new)))
            if old.verdict != new.verdict or od != nd:
                out.changed.append(CellChange(case, adapter, old.verdict, new.verdict, od, nd,
                                              old.framework_version, new.framework_version))
        elif case in both_cases and adapter in both_adapters:
            if new:
                out.added_cells.append((case, adapter, new.verdict))
            else:
                out.removed_cells.append((case, adapter, old.verdict))
    old_v = _versions(baseline)
    for adapter, versions in sorted(_versions(current).items()):
        if adapter in old_v and old_v[adapter] != versions:
            out.version_changes.append((adapter, ", ".join(sorted(old_v[adapter])), ", ".join(sorted(versions))))
    return out


def _versions(m: Merged) -> dict[str, set[str]]:
    v: dict[str, set[str]] = defaultdict(set)
    for r in m.records:
        v[r.adapter].add(r.framework_version)
    return v


# --------------------------------------------------------------------------- view model

def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _num(v, digits: int = 4):
    """Round for the embedded JSON (4 significant digits; None for non-finite)."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return None
        return float(f"{v:.{digits}g}") if isinstance(v, float) else v
    return v


def rerun_command(r: ResultRecord) -> str | None:
    """``tox -e ENV -- "NODEID"`` (shell-quoted differently if the node id needs it).

    Records written outside tox (env ``local``) get the plain pytest command instead.
    """
    if not r.nodeid:
        return None
    node = f'"{r.nodeid}"' if not re.search(r'["$`\\!]', r.nodeid) else shlex.quote(r.nodeid)
    if r.env == "local":
        return f"python -m pytest -p no:cacheprovider {node}"
    return f"tox -e {shlex.quote(r.env)} -- {node}"


def _safe_url(url) -> str | None:
    return url if isinstance(url, str) and re.match(r"(?i)^https?://", url) else None


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
                                        "url": _safe_url(s.get("url")), "titles": [], "cases": []})
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
    vs = set(verdicts)
    return next((v for v in SEVERITY if v in vs), None)


def _compact_comparisons(cmps: list[dict]) -> list[list]:
    return [[c.get("step"), c.get("op"), c.get("observable"), bool(c.get("passed")), _num(c.get("max_abs_err")),
             _num(c.get("max_rel_err")), _num(c.get("tol_at_worst")), _num(c.get("ratio")),
             _num(c.get("headroom")), c.get("message")] for c in cmps]


def build_context(merged: Merged, title: str = "bnconform parity report", baseline_diff: Diff | None = None,
                  figures: dict[str, str] | None = None, baseline_label: str | None = None,
                  plots_note: str | None = None) -> dict:
    """The template's view model: header facts, matrices, summary views, embedded data."""
    records = merged.records
    fw_of = {r.adapter: r.framework for r in records}
    columns = sorted(fw_of, key=lambda a: (fw_of[a], a))
    col_index = {a: i for i, a in enumerate(columns)}
    framework_spans = []
    for a in columns:
        if framework_spans and framework_spans[-1][0] == fw_of[a]:
            framework_spans[-1][1] += 1
        else:
            framework_spans.append([fw_of[a], 1])
    # one meta record per case (first by theme/case file order)
    cases: "OrderedDict[str, ResultRecord]" = OrderedDict()
    for r in sorted(records, key=lambda r: (r.theme, r.case_file, r.case_id)):
        cases.setdefault(r.case_id, r)
    case_index = {c: i for i, c in enumerate(cases)}
    marks: dict[tuple[str, str], str] = {}
    others: dict[tuple[str, str], list] = defaultdict(list)
    for kind, pairs in (("duplicate", merged.duplicates), ("conflict", merged.conflicts)):
        for a, b in pairs:
            if marks.get(a.cell) != "conflict":
                marks[a.cell] = kind
            others[a.cell].append({"kind": kind, "verdict": b.verdict, "env": b.env, "version": b.framework_version,
                                   "platform": b.platform, "divergences": sorted(divergence_ids(b))})
    changes = baseline_diff.changed_cells() if baseline_diff else {}
    added = {(c, a) for c, a, _ in baseline_diff.added_cells} if baseline_diff else set()
    new_cases = set(baseline_diff.new_cases) if baseline_diff else set()
    new_adapters = set(baseline_diff.new_adapters) if baseline_diff else set()

    def cell_view(case_id, adapter):
        r = merged.cells.get((case_id, adapter))
        if r is None:
            return None
        key = (case_id, adapter)
        changed = key in changes or key in added or case_id in new_cases or adapter in new_adapters
        return {"v": r.verdict, "g": GLYPHS[r.verdict], "i": cell_index[key], "mark": marks.get(key),
                "changed": changed, "tip": f"{case_id} on {adapter}: {r.verdict}"
                + (f" (was {changes[key].old_verdict})" if key in changes else "")
                + "".join(f" from {d['ref']}" for d in r.divergences if d.get("ref"))}

    # embedded data: cases, adapters, divergences deduplicated; one compact entry per cell
    div_index: dict[str, int] = {}
    divs: list[dict] = []
    cells_data = []
    cell_index: dict[tuple[str, str], int] = {}
    for key in sorted(merged.cells, key=lambda k: (case_index[k[0]], col_index[k[1]])):
        r = merged.cells[key]
        ids = []
        for d in r.divergences:
            k = json.dumps(d, sort_keys=True, default=str)
            if k not in div_index:
                div_index[k] = len(divs)
                divs.append({"id": d.get("id"), "kind": d.get("kind"), "summary": d.get("summary"),
                             "source": d.get("source"), "source_url": _safe_url(d.get("source")),
                             "issue": d.get("issue"), "issue_url": _safe_url(d.get("issue")),
                             "finding": d.get("finding"), "options": d.get("options") or {},
                             "versions": d.get("versions"), "observables": d.get("observables") or [],
                             "raises": d.get("raises"), "ref": d.get("ref"), "max_ratio": d.get("max_ratio"),
                             "derivation": d.get("derivation")})
            ids.append(div_index[k])
        ch = changes.get(key)
        cell_index[key] = len(cells_data)
        cells_data.append({
            "c": case_index[r.case_id], "a": col_index[r.adapter], "v": r.verdict, "reason": r.reason,
            "div": ids, "cmp": _compact_comparisons(r.comparisons),
            "ccmp": _compact_comparisons(r.canonical_comparisons), "no": r.not_observed,
            "fv": r.framework_version, "dev": r.device, "env": r.env, "py": r.python, "plat": r.platform,
            "ts": r.timestamp, "dur": _num(r.duration_s, 3), "node": r.nodeid, "rerun": rerun_command(r),
            "mark": marks.get(key), "others": others.get(key, []),
            "was": ({"v": ch.old_verdict, "div": list(ch.old_divergences), "fv": ch.old_version} if ch
                    else ({"v": None} if key in added else None)),
        })
    groups = source_groups(list(cases.values()))
    data = {
        "cases": [{"id": c, "title": r.title, "behaviour": r.behaviour, "theme": r.theme, "tags": r.tags,
                   "file": r.case_file,
                   "sources": [{"title": s.get("title"), "url": _safe_url(s.get("url")), "file": s.get("file")}
                               for s in r.sources],
                   } for c, r in cases.items()],
        "adapters": [{"name": a, "framework": fw_of[a]} for a in columns],
        "divergences": divs,
        "cells": cells_data,
        "glyphs": GLYPHS,
        "plots_note": plots_note,
    }
    # base64 of each case's SVG: safe by construction inside JSON, shown via <img src="data:...">;
    # a separate block, parsed on the first drill-down only
    figs = {str(case_index[c]): base64.b64encode(svg.encode("utf-8")).decode("ascii")
            for c, svg in (figures or {}).items() if c in case_index}

    def row(case_id):
        meta = cases[case_id]
        return {"id": case_id, "title": meta.title, "behaviour": meta.behaviour, "tags": " ".join(meta.tags),
                "new": case_id in new_cases, "cells": [cell_view(case_id, a) for a in columns]}

    themes: "OrderedDict[str, list]" = OrderedDict()
    for case_id, meta in cases.items():
        themes.setdefault(meta.theme, []).append(row(case_id))
    by_source = []
    for n, g in enumerate(groups):
        by_source.append({**g, "anchor": f"src-{n}", "rows": [row(c) for c in g["cases"]]})
    # divergence by question: per source group and adapter, the verdicts of its cases
    questions = []
    for g in by_source:
        qcells = []
        for a in columns:
            recs = [merged.cells[(c, a)] for c in g["cases"] if (c, a) in merged.cells]
            cnt = Counter(r.verdict for r in recs)
            dids = sorted({i for r in recs for i in divergence_ids(r)})
            qcells.append({"worst": worst(cnt), "counts": [(v, GLYPHS[v], cnt[v]) for v in SEVERITY if cnt[v]],
                           "divergences": dids,
                           "tip": "; ".join(f"{r.case_id}: {r.verdict}" for r in recs)} if recs else None)
        questions.append({"label": g["label"], "kind": g["kind"], "url": g["url"], "titles": g["titles"],
                          "anchor": g["anchor"], "n": len(g["cases"]), "cells": qcells})
    tags = sorted({t for r in cases.values() for t in r.tags})
    environments = sorted({(r.framework, r.framework_version, r.env, r.python, r.platform, r.device)
                           for r in records})
    per_adapter = []
    for a in columns:
        cnt = Counter(r.verdict for (c, ad), r in merged.cells.items() if ad == a)
        per_adapter.append({"adapter": a, "framework": fw_of[a], "counts": [cnt.get(v, 0) for v in VERDICTS]})
    stamps = sorted(r.timestamp for r in records)
    commits = sorted({str(getattr(r, "commit")) for r in records if getattr(r, "commit", None)})
    return {
        "title": title,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": ", ".join(commits) if commits else _git_commit(),
        "commit_from_records": bool(commits),
        "run_span": (stamps[0], stamps[-1]) if stamps else None,
        "counts": [(v, merged.counts().get(v, 0)) for v in VERDICTS],
        "total": len(merged.cells),
        "verdicts": VERDICTS,
        "glyphs": GLYPHS,
        "environments": environments,
        "frameworks": sorted({(r.framework, r.framework_version) for r in records}),
        "pythons": sorted({r.python for r in records}),
        "platforms": sorted({r.platform for r in records}),
        "devices": sorted({r.device for r in records}),
        "per_adapter": per_adapter,
        "columns": [{"name": a, "framework": fw_of[a], "new": a in new_adapters} for a in columns],
        "framework_spans": framework_spans,
        "framework_names": sorted(set(fw_of.values())),
        "tags": tags,
        "themes": themes,
        "by_source": by_source,
        "questions": questions,
        "data": data,
        "figs": figs,
        "duplicates": merged.duplicates,
        "conflicts": merged.conflicts,
        "bad_lines": merged.bad_lines,
        "diff": baseline_diff,
        "baseline_label": baseline_label,
    }


# --------------------------------------------------------------------------- figures

def _figure_input(case_id: str, recs: list[ResultRecord]) -> dict | None:
    """What one case's figure shows, as plain data (also the cache key)."""
    traj: dict[str, dict] = {}
    oracle: dict[str, dict] = {}
    ratios: dict[str, dict] = {}
    alt: dict[str, dict] = {}  # the oracle with an adapter's documented divergences, where it was used
    for r in sorted(recs, key=lambda r: r.adapter):
        canon = r.canonical_comparisons or r.comparisons
        for c in canon:
            obs = c.get("observable")
            if obs in TRAJECTORY_OBSERVABLES and isinstance(c.get("expected"), list):
                oracle.setdefault(obs, {}).setdefault(str(c["step"]), c["expected"])
        for c in r.comparisons:
            obs = c.get("observable")
            if obs in TRAJECTORY_OBSERVABLES and isinstance(c.get("actual"), list):
                traj.setdefault(obs, {}).setdefault(r.adapter, {})[str(c["step"])] = c["actual"]
            if r.canonical_comparisons and obs in TRAJECTORY_OBSERVABLES and isinstance(c.get("expected"), list):
                alt.setdefault(obs, {}).setdefault(r.adapter, {})[str(c["step"])] = c["expected"]
            ratio = c.get("ratio")
            if ratio is None and c.get("passed") is False:
                ratio = math.inf
            prev = ratios.setdefault(r.adapter, {}).get(obs)
            if ratio is not None and (prev is None or ratio > prev):
                ratios[r.adapter][obs] = ratio
    if not ratios and not traj:
        return None
    ratios = {a: {o: (None if math.isinf(v) else v) for o, v in d.items()} for a, d in ratios.items() if d}
    # keep a divergent oracle only where it differs from the canonical one
    for obs, per in alt.items():
        for a in list(per):
            if all(per[a][st] == oracle.get(obs, {}).get(st) for st in per[a]):
                del per[a]
    alt = {o: per for o, per in alt.items() if per}
    return {"case": case_id, "oracle": oracle, "traj": traj, "alt": alt, "ratios": ratios}


def _render_figure(inp: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    adapters = sorted(set(inp["ratios"]) | {a for t in inp["traj"].values() for a in t})
    cmap = plt.get_cmap("tab10" if len(adapters) <= 10 else "tab20")
    colour = {a: cmap(i % cmap.N) for i, a in enumerate(adapters)}
    markers = "osD^v<>phX*"
    traj_obs = [o for o in TRAJECTORY_OBSERVABLES if o in inp["traj"] or o in inp["oracle"]]
    nrows = 2 if traj_obs else 1
    n_alt = len({a for per in inp["alt"].values() for a in per})
    ncol = 3
    legend_rows = -(-(len(adapters) + n_alt + (1 if traj_obs else 0)) // ncol)
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "bnconform", "font.size": 8,
                         "axes.titlesize": 9, "figure.dpi": 72}):
        fig = plt.figure(figsize=(7.2, 2.6 * nrows + 0.16 * legend_rows))
        gs = fig.add_gridspec(nrows, max(1, len(traj_obs)))
        for k, obs in enumerate(traj_obs):
            ax = fig.add_subplot(gs[0, k])
            steps = sorted({int(s) for s in inp["oracle"].get(obs, {})}
                           | {int(s) for t in inp["traj"].get(obs, {}).values() for s in t})
            nch = max([len(v) for v in inp["oracle"].get(obs, {}).values()]
                      + [len(v) for t in inp["traj"].get(obs, {}).values() for v in t.values()] + [0])
            shown = min(nch, PLOT_CHANNELS)
            ys = inp["oracle"].get(obs, {})
            for ch in range(shown):
                pts = [(s, ys[str(s)][ch]) for s in steps if str(s) in ys and ch < len(ys[str(s)])]
                pts = [(s, float("nan") if v is None else v) for s, v in pts]
                if pts:
                    ax.plot(*zip(*pts), color="black", lw=1.0, marker="o", ms=6, mfc="none",
                            label="oracle (canonical)" if ch == 0 else None, zorder=1)
            n = max(1, len(adapters))
            for i, a in enumerate(adapters):
                t = inp["alt"].get(obs, {}).get(a)
                for ch in range(shown) if t else ():
                    pts = [(int(s), float("nan") if v[ch] is None else v[ch])
                           for s, v in sorted(t.items(), key=lambda kv: int(kv[0])) if ch < len(v)]
                    ax.plot(*zip(*pts), ls="--", lw=1.0, color=colour[a], zorder=1,
                            label=f"oracle with {a}'s divergences" if ch == 0 else None)
            for i, a in enumerate(adapters):
                t = inp["traj"].get(obs, {}).get(a)
                if not t:
                    continue
                dx = (i - (n - 1) / 2) * 0.06
                for ch in range(shown):
                    pts = [(int(s) + dx, float("nan") if v[ch] is None else v[ch])
                           for s, v in sorted(t.items(), key=lambda kv: int(kv[0])) if ch < len(v)]
                    if pts:
                        ax.plot(*zip(*pts), ls="none", marker=markers[i % len(markers)], ms=3.5,
                                color=colour[a], label=a if ch == 0 else None, zorder=2)
            more = f" (channels 0–{shown - 1} of {nch})" if nch > shown else ""
            ax.set_title(f"{obs} per step{more}")
            ax.set_xlabel("step")
            ax.set_xticks(steps if len(steps) <= 12 else steps[:: max(1, len(steps) // 10)])
            ax.yaxis.set_major_locator(MaxNLocator(5))
            ax.grid(alpha=0.3)
        ax = fig.add_subplot(gs[nrows - 1, :])
        observables = sorted({o for d in inp["ratios"].values() for o in d})
        floor, top = 1e-4, 1e4
        xs = {o: j for j, o in enumerate(observables)}
        n = max(1, len(adapters))
        for i, a in enumerate(adapters):
            d = inp["ratios"].get(a, {})
            if not d:
                continue
            dx = (i - (n - 1) / 2) * (0.6 / n)
            pts = [(xs[o] + dx, v) for o, v in d.items()]
            ok = [(x, min(max(v, floor), top)) for x, v in pts if v is not None]
            bad = [(x, top) for x, v in pts if v is None]
            if ok:
                ax.plot(*zip(*ok), ls="none", marker=markers[i % len(markers)], ms=4.5, color=colour[a],
                        label=a)
            if bad:
                ax.plot(*zip(*bad), ls="none", marker="X", ms=7, color=colour[a])
        ax.axhline(1.0, color="#b00", lw=1, ls="--")
        ax.text(len(observables) - 0.5 if observables else 0.5, 1.15, "tolerance", color="#b00", ha="right",
                va="bottom")
        ax.set_yscale("log")
        ax.set_ylim(floor * 0.5, top * 2)
        ax.yaxis.set_major_locator(LogLocator(base=100.0, numticks=6))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # no mathtext: 3x faster
        ax.set_xticks(range(len(observables)), observables, rotation=18, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, max(len(observables) - 0.4, 0.6))
        ax.set_ylabel("worst |err| / tol")
        ax.set_title(f"error vs tolerance per observable (worst step; ≤{floor:g} drawn at {floor:g}; "
                     "X = structural failure)")
        ax.grid(alpha=0.3, axis="y")
        handles, labels = [], []
        for a_ in fig.axes:
            for h, lab in zip(*a_.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fig.legend(handles, labels, loc="upper center", ncol=min(ncol, len(labels)), fontsize=7,
                       bbox_to_anchor=(0.5, 1.0), frameon=False)
        legend_rows = -(-len(labels) // ncol) if handles else 0
        height = fig.get_figheight() * 72  # points
        top = 1 - (legend_rows * 11 + 26) / height
        fig.subplots_adjust(left=0.1, right=0.985, bottom=46 / height, top=top, hspace=0.62, wspace=0.22)
        import io
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"font-family: [^;\"]*", "font-family: 'DejaVu Sans', Arial, sans-serif", svg)
    svg = re.sub(r"\n\s+", "\n", svg)
    # 2 decimals are plenty at this size; halves the file. Only geometry attributes, never <text> content.
    svg = re.sub(r'(\s(?:x|y|d|transform|width|height|style)=")([^"]*)"',
                 lambda m: m.group(1) + re.sub(r"(\d+\.\d\d)\d+", r"\1", m.group(2)) + '"', svg)
    # Text from results reaches the SVG only XML-escaped; make sure it cannot close the embedding element.
    return re.sub(r"(?i)</script", "&lt;/script", svg)


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """Hash of this module and matplotlib's version: part of every figure's cache key."""
    import matplotlib
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16] + matplotlib.__version__


def default_figure_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnconform" / "figures"


def case_figures(merged: Merged, cache_dir: str | Path | None = None) -> dict[str, str]:
    """One SVG per case (trajectories of the running statistics + error vs tolerance).

    Cached by the hash of the figure's input data: unchanged cases are not redrawn.
    """
    by_case: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in merged.records:
        by_case[r.case_id].append(r)
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:  # read-only home, say: draw without a cache
            cache = None
    code = _code_version()
    out: dict[str, str] = {}
    todo: list[tuple[str, dict, Path | None]] = []
    for case_id, recs in sorted(by_case.items()):
        inp = _figure_input(case_id, recs)
        if inp is None:
            continue
        key = hashlib.sha256((code + json.dumps(inp, sort_keys=True)).encode()).hexdigest()[:24]
        path = cache / f"{key}.svg" if cache else None
        if path and path.exists():
            out[case_id] = path.read_text(encoding="utf-8")
        else:
            todo.append((case_id, inp, path))
    workers = min(os.cpu_count() or 1, 8, len(todo) // 8)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers) as pool:
            svgs = list(pool.map(_render_figure, [inp for _, inp, _ in todo], chunksize=4))
    else:
        svgs = [_render_figure(inp) for _, inp, _ in todo]
    for (case_id, _, path), svg in zip(todo, svgs):
        if path:
            try:
                path.write_text(svg, encoding="utf-8")
            except OSError:
                pass
        out[case_id] = svg
    return out


# --------------------------------------------------------------------------- render / write

def _environment() -> Environment:
    return Environment(loader=PackageLoader("bnconform", "templates"), autoescape=select_autoescape(default=True),
                       trim_blocks=True, lstrip_blocks=True)


def render(merged: Merged, title: str = "bnconform parity report", baseline_diff: Diff | None = None,
           figures: dict[str, str] | None = None, baseline_label: str | None = None,
           plots_note: str | None = None) -> str:
    """Render the report HTML (Jinja2, autoescaped: no text from results can inject markup)."""
    ctx = build_context(merged, title, baseline_diff=baseline_diff, figures=figures, baseline_label=baseline_label,
                        plots_note=plots_note)
    return _environment().get_template("parity.html.j2").render(**ctx)


def summary(merged: Merged, baseline_diff: Diff | None = None) -> dict:
    """Machine-readable summary for CI systems."""
    out = {
        "counts": dict(merged.counts()),
        "cells": len(merged.cells),
        "failing": [{"case": r.case_id, "adapter": r.adapter, "verdict": r.verdict, "reason": r.reason}
                    for r in merged.records if r.verdict in FAILING],
        "conflicts": [{"case": a.case_id, "adapter": a.adapter, "verdicts": [a.verdict, b.verdict],
                       "envs": [a.env, b.env]} for a, b in merged.conflicts],
        "duplicates": len(merged.duplicates),
        "bad_lines": [str(b) for b in merged.bad_lines],
    }
    if baseline_diff is not None:
        out["baseline_diff"] = baseline_diff.to_dict()
    return out


def write_report(paths: list[str | Path], out: str | Path, summary_path: str | Path | None = None,
                 baseline: list[str | Path] | None = None, plots: bool = True,
                 figure_cache: str | Path | None = None) -> tuple[Merged, Diff | None]:
    """Read, merge, (diff), render; write the HTML (and the summary JSON if asked).

    ``figure_cache`` defaults to ``$XDG_CACHE_HOME/bnconform/figures`` (``~/.cache/...``).
    """
    merged = load_and_merge(paths)
    base_diff = diff(load_and_merge(baseline), merged) if baseline else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figures, note = None, "plots were switched off (--no-plots)"
    if plots:
        try:
            figures = case_figures(merged, figure_cache if figure_cache is not None else default_figure_cache())
            note = None
        except ImportError as exc:  # matplotlib is an optional dependency of the report
            note = f"plots unavailable: {exc} (pip install matplotlib)"
    label = ", ".join(map(str, baseline)) if baseline else None
    out.write_text(render(merged, baseline_diff=base_diff, figures=figures, baseline_label=label, plots_note=note),
                   encoding="utf-8")
    if summary_path:
        Path(summary_path).parent.mkdir(parents=True, exist_ok=True)
        Path(summary_path).write_text(json.dumps(summary(merged, base_diff), indent=2), encoding="utf-8")
    return merged, base_diff
