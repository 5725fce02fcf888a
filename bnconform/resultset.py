"""The results layer: merge result shards and diff two runs (no HTML, no plotting).

Shards come from several tox envs and machines (``reports/results/*.jsonl``).
Merging never silently overwrites: the same cell (case, adapter) reported
twice with the same verdict, framework version and divergence set is a
``duplicate``; otherwise a ``conflict``. Both are listed in the report; the
matrix shows the first record read and marks the cell.

:func:`diff` compares two merged runs (baseline, current) cell by cell: verdict
or divergence-set changes, new/removed cases, adapters and cells. The gate and
``bnconform report --baseline`` use it; ``Diff.text()`` is its readable form.
The gate (:mod:`bnconform.gate`) imports only this module and
:mod:`bnconform.results`, never the report renderer.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .results import FAILING, BadLine, ResultRecord, Shard, read_shards

# --------------------------------------------------------------------------- merge

@dataclass
class Merged:
    """Result of merging shards: one record per cell plus what did not merge cleanly."""

    cells: dict[tuple[str, str], ResultRecord] = field(default_factory=dict)
    duplicates: list[tuple[ResultRecord, ResultRecord]] = field(default_factory=list)
    conflicts: list[tuple[ResultRecord, ResultRecord]] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    #: The files read, with their run manifests (empty when merged from bare records).
    shards: list[Shard] = field(default_factory=list)

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
    """Read result files/directories and merge them (bad lines are kept, not fatal;
    each file's run manifest is kept in ``Merged.shards``)."""
    shards = read_shards(paths)
    out = merge([r for s in shards for r in s.records], [b for s in shards for b in s.bad_lines])
    out.shards = shards
    return out


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


# --------------------------------------------------------------------------- row-level reproduction

def unreproduced_divergences(records: Iterable[ResultRecord]) -> list[str]:
    """Divergences modelled by oracle ``options`` that no longer reproduce on a row.

    Returns one line per ``(env, adapter, divergence id)``; empty when every
    modelled divergence still shows somewhere.

    A quirk or known bug with ``options`` is judged per cell against the oracle
    run with those options, and the engine's per-cell strictness ("the framework
    now matches the canonical oracle" -> ``fails``) catches a VALUE divergence
    that stops. A precision divergence (``variance_algorithm: one_pass``, a
    narrower ``compute_dtype`` / ``accumulation_dtype``) only widens the
    tolerance envelope around the exact value: on one cell an accurate
    framework and one running the documented algorithm are both inside it, so
    no cell can notice a fix. Across a row it can be noticed: a framework that
    still runs the documented algorithm leaves the canonical tolerance on some
    cell where the divergence manifests (that is what made it a documented
    divergence). When NONE of the row's cells that show the divergence
    (verdict ``quirk``/``known_bug``) fails its canonical comparison, the
    documented behaviour is gone from the row: a behaviour change. No threshold
    is involved: "fails the canonical comparison" is the tolerance model's own
    pass/fail.

    Only meaningful on a complete run of the row (a ``-k`` selection may hold
    none of the reproducing cells): callers apply it to complete shards.
    """
    shows: dict[tuple[str, str, str], int] = defaultdict(int)
    reproduces: set[tuple[str, str, str]] = set()
    for r in records:
        if r.verdict not in ("quirk", "known_bug"):
            continue
        canonical = r.canonical_comparisons or r.comparisons
        out = any(c.get("passed") is False for c in canonical)
        for d in r.divergences:
            if not d.get("options") or d.get("kind") not in ("quirk", "known_bug"):
                continue
            key = (r.env, r.adapter, str(d.get("id")))
            shows[key] += 1
            if out:
                reproduces.add(key)
    return [f"documented divergence {i} no longer reproduces on {a} (env {e}): on none of its {n} cells does the "
            f"framework leave the canonical tolerance (fixed, or the row takes another code path?)"
            for (e, a, i), n in sorted(shows.items()) if (e, a, i) not in reproduces]
