"""The upgrade gate: did BatchNorm behaviour change, and is every required
framework really tested? Yes/no with the exact cells — never a vacuous pass.

``bnconform gate CURRENT... [--baseline BASELINE...] [--require-frameworks torch,tensorflow]
[--map-adapter OLD NEW]`` exits 0 only when ALL hold:

* the current results are readable (no bad lines, no conflicting shards) and
  contain at least one cell;
* no current cell is ``fails`` or ``error`` (a documented quirk or known bug
  that stopped reproducing is already ``fails``);
* against the baseline (if given): no cell changed verdict or divergence set,
  and no case, adapter or cell disappeared (new ones are listed, not fatal);
* every required framework has at least one cell that is not ``unsupported``
  (an import failure or a fully skipped framework fails the gate).

``--map-adapter OLD NEW`` compares baseline adapter OLD with current adapter
NEW, e.g. tf-keras ``BatchNormalization(fused=True)`` against Keras 3's layer
for the Keras 2 -> 3 migration view.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from .resultset import Diff, Merged, diff, load_and_merge, merge
from .results import FAILING


@dataclass
class GateResult:
    """The gate's answer: ``passed`` and the reasons, one line each."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    diff: Diff | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = "GATE PASSED" if self.passed else f"GATE FAILED ({len(self.problems)} problem(s))"
        lines = [head] + [f"  FAIL: {p}" for p in self.problems] + [f"  note: {n}" for n in self.notes]
        if self.diff is not None:
            lines += ["", "Against the baseline:", *("  " + ln for ln in self.diff.text().splitlines())]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"passed": self.passed, "problems": self.problems, "notes": self.notes,
                "diff": self.diff.to_dict() if self.diff else None}


def rename_adapters(merged: Merged, mapping: dict[str, str]) -> Merged:
    """A copy of ``merged`` with adapters renamed OLD -> NEW (for cross-API comparisons)."""
    records = [r.model_copy(update={"adapter": mapping.get(r.adapter, r.adapter)}) for r in merged.records]
    out = merge(records, merged.bad_lines)
    out.conflicts = merged.conflicts + out.conflicts
    return out


def evaluate(current: Merged, baseline: Merged | None = None, require_frameworks: list[str] | None = None) -> GateResult:
    """Apply the gate's rules (module docstring) to merged results."""
    res = GateResult()
    if not current.cells:
        res.problems.append("no result cells at all: nothing was tested")
    for bad in current.bad_lines:
        res.problems.append(f"unreadable result line {bad}")
    for a, b in current.conflicts:
        res.problems.append(f"conflicting shards for {a.case_id} on {a.adapter}: {a.verdict} (env {a.env}) "
                            f"vs {b.verdict} (env {b.env})")
    for r in sorted(current.records, key=lambda r: r.cell):
        if r.verdict in FAILING:
            reason = (r.reason or "").splitlines()[0][:300] if r.reason else ""
            res.problems.append(f"{r.verdict}: {r.case_id} on {r.adapter} ({r.framework} {r.framework_version}): {reason}")
    for fw in require_frameworks or []:
        cells = [r for r in current.records if r.framework == fw or r.framework.split(".")[0] == fw]
        if not cells:
            res.problems.append(f"required framework {fw!r} produced no results (not installed, failed to import, "
                                f"or its env did not run)")
        elif all(r.verdict == "unsupported" for r in cells):
            res.problems.append(f"required framework {fw!r}: every one of its {len(cells)} cells is unsupported")
    if baseline is not None:
        d = diff(baseline, current)
        res.diff = d
        for c in d.changed:
            res.problems.append("behaviour changed: " + c.text())
        for case in d.removed_cases:
            res.problems.append(f"case removed since the baseline: {case}")
        for adapter in d.removed_adapters:
            res.problems.append(f"adapter removed since the baseline: {adapter}")
        for case, adapter, verdict in d.removed_cells:
            res.problems.append(f"cell removed since the baseline: {case} on {adapter} (was {verdict})")
        res.notes += [f"new case: {c}" for c in d.new_cases] + [f"new adapter: {a}" for a in d.new_adapters]
        res.notes += [f"version {a}: {o} -> {n}" for a, o, n in d.version_changes]
    return res


def add_parser(sub) -> None:
    """Register ``bnconform gate`` on an argparse sub-parser collection."""
    p = sub.add_parser("gate", help="gate a run: failing cells, behaviour changes against a baseline, required frameworks")
    p.add_argument("current", nargs="+", help="current results files or directories of *.jsonl")
    p.add_argument("--baseline", nargs="+", default=None, help="baseline results files or directories")
    p.add_argument("--require-frameworks", default="", help="comma-separated import names that must have tested cells")
    p.add_argument("--map-adapter", action="append", nargs=2, default=[], metavar=("OLD", "NEW"),
                   help="compare baseline adapter OLD with current adapter NEW (names may contain '=')")
    p.add_argument("--json", default=None, help="also write the gate result as JSON here")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        current = load_and_merge(args.current)
        baseline = load_and_merge(args.baseline) if args.baseline else None
    except FileNotFoundError as exc:
        print(f"bnconform gate: {exc}", file=sys.stderr)
        return 2
    mapping = dict(args.map_adapter)
    if baseline is not None and mapping:
        baseline = rename_adapters(baseline, mapping)
    required = [f.strip() for f in args.require_frameworks.split(",") if f.strip()]
    result = evaluate(current, baseline, required)
    print(result.text())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result.to_dict(), fh, indent=2)
    return 0 if result.passed else 1


