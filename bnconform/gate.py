"""The upgrade gate: did BatchNorm behaviour change, and is the evidence
complete, current and measured? Yes/no with the exact cells and the reason —
never a pass on incomplete, stale, vacuous or drifted evidence.

``bnconform gate CURRENT... [--baseline BASELINE...] [--require-frameworks torch,tensorflow]
[--map-adapter OLD NEW] [--cases DIR] [--allow-partial] [--allow-legacy-shards]``
exits 0 only when ALL hold (README "What a passing gate guarantees"):

Evidence (current results, and the baseline's too):

* every shard carries a run manifest (:mod:`bnconform.results`) and ended
  ``complete`` — not interrupted, crashed, stopped by ``-x``, or failed in
  collection; a shard with no ``run_end`` line (killed run) fails;
* every collected cell has its record, and no record is foreign to the run;
* the run selected the whole catalogue for its adapters (a ``-k``/``-m``/path
  selection is partial) unless ``--allow-partial``;
* all shards were run on one catalogue and on the one on disk: ``./cases``
  when present (the checkout), else the built-in catalogue of the installed
  package, plus every ``--cases`` directory (as ``bnconform run --cases``
  added them); a catalogue that failed to load fails. "The catalogue" of a
  shard is the set of files its verdicts depend on, recorded per file in its
  manifest (``RunStart.catalogue_files``): every case file and the
  expectations files of its own adapter groups — so a sweep shard of
  onnxruntime stays valid evidence when ``expectations/torch.yaml`` changes,
  and goes stale when a case or ``expectations/onnx.yaml`` does. Shards
  written before that record are judged by their whole digest;
* no unreadable line, no conflicting shards, at least one cell, and at least
  one value compared (a run of only ``unsupported`` cells measured nothing);
* every record's verdict is backed by its own evidence (:func:`unbacked_verdicts`):
  a ``conforms``, ``quirk`` or ``known_bug`` cell compared at least one value
  or matched a documented refusal (an entry with ``raises``), and a
  ``conforms`` or ``quirk`` cell has no failing comparison (only a bounded
  ``known_bug`` expected failure may). The engine never writes such records;
  the check guards records written by another version or tool, or edited.

Verdicts:

* no current cell is ``fails`` or ``error`` (a documented quirk or known bug
  that stopped reproducing is already ``fails``); each is listed once, with
  its baseline verdict when there is a baseline;
* every documented divergence modelled by oracle options still reproduces
  on its row: at least one of the cells that show it leaves the canonical
  tolerance (:func:`bnconform.resultset.unreproduced_divergences`; the row-level
  check a precision divergence needs, which widens the envelope and so cannot
  be caught per cell). Skipped, with a note, for ``--allow-partial`` runs;
* every required framework (``--require-frameworks``) and every framework of
  the baseline has cells in the current results that are not all ``unsupported``;
* against the baseline: no cell changed verdict or divergence set, no case,
  adapter or cell disappeared (new ones are listed, not fatal);
* nothing measured in the baseline went unmeasured (:func:`lost_measurements`):
  per cell of the same verdict in both, every (step, op, observable) the
  baseline compared is compared again — an adapter that stops observing
  ``running_var`` on a new release must not pass on the rest;
* no magnitude drift (:func:`drift`): per (cell, step, observable) the
  error/tolerance ratio did not grow beyond :data:`DRIFT_FACTOR` times the
  baseline's, measured above the rounding-noise floor :data:`NOISE_FLOOR`.

``--map-adapter OLD NEW`` compares baseline adapter OLD with current adapter
NEW, e.g. tf-keras ``BatchNormalization(fused=True)`` against Keras 3's layer
for the Keras 2 -> 3 migration view.

The gate imports the results layer only (:mod:`bnconform.resultset`), no HTML.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .compare import SAFETY
from .builtin import BuiltinMissing, location
from .results import FAILING, Shard, catalogue_changes, catalogue_digest, catalogue_dirs, catalogue_files
from .resultset import Diff, Merged, diff, divergence_ids, load_and_merge, merge, unreproduced_divergences

#: Error/tolerance ratios below this are within a correct algorithm's rounding
#: noise. The tolerance (``bnconform.compare``) is ``SAFETY`` times the rounding
#: error bound of a stable algorithm in the accumulation dtype (sqrt(m) growth of
#: the reductions plus one storage rounding per step), so a correct
#: implementation's error lies below ``tol / SAFETY``: anywhere in
#: ``[0, 1/SAFETY]`` a ratio says nothing about the implementation (reduction
#: order, vector width and thread count move it there freely), and a move inside
#: it is not drift.
NOISE_FLOOR = 1.0 / SAFETY
#: Drift = the ratio, floored at :data:`NOISE_FLOOR`, grew by more than this
#: factor. Above the floor the error is a property of the implementation's
#: algorithm, not of rounding noise; the precision model counts error in units
#: of the unit roundoff, a power of two, so a doubling is one more bit lost —
#: the smallest change of accuracy the model can state. Hence 2: a conforming
#: cell that moves from noise (<= 0.25) past 0.5 of its tolerance, or a known
#: bug whose error more than doubles, fails the gate. A ratio that shrinks by
#: the same factor is reported as a note (an improvement; a known bug that
#: vanishes is already ``fails``).
DRIFT_FACTOR = 2.0


@dataclass(frozen=True)
class Drift:
    """One (cell, step, observable) whose error/tolerance ratio moved beyond :data:`DRIFT_FACTOR`."""

    case_id: str
    adapter: str
    step: int
    op: str
    observable: str
    old_ratio: float
    new_ratio: float
    verdict: str

    @property
    def worse(self) -> bool:
        return _floored(self.new_ratio) > _floored(self.old_ratio)

    def text(self) -> str:
        return (f"{self.case_id} on {self.adapter} ({self.verdict}): step {self.step} {self.op} {self.observable}: "
                f"error/tolerance {_fmt(self.old_ratio)} -> {_fmt(self.new_ratio)}")

    def to_dict(self) -> dict:
        f = lambda v: None if math.isinf(v) else v  # noqa: E731
        return {"case": self.case_id, "adapter": self.adapter, "step": self.step, "op": self.op,
                "observable": self.observable, "old_ratio": f(self.old_ratio), "new_ratio": f(self.new_ratio),
                "verdict": self.verdict, "worse": self.worse}


def _fmt(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.3g}"


def _floored(ratio: float) -> float:
    return max(ratio, NOISE_FLOOR)


def _key(c: dict) -> tuple[int, str, str]:
    """A comparison's (step, op, observable)."""
    return int(c.get("step", 0)), str(c.get("op", "")), str(c.get("observable", ""))


def _ratios(comparisons: list[dict]) -> dict[tuple[int, str, str], float]:
    out = {}
    for c in comparisons:
        if c.get("message") and not c.get("ratio"):
            continue  # structural (missing, shape, dtype): judged by the verdict, no magnitude
        ratio = c.get("ratio")
        out[_key(c)] = math.inf if ratio is None else float(ratio)
    return out


def drift(baseline: Merged, current: Merged) -> list[Drift]:
    """Per (cell, step, observable) of cells present in both runs with the SAME
    verdict and divergence set (others are reported as changed cells):
    every ratio whose floored value (:data:`NOISE_FLOOR`) moved by more than
    :data:`DRIFT_FACTOR`, up or down (``Drift.worse`` tells which)."""
    out = []
    for key in sorted(set(baseline.cells) & set(current.cells)):
        old, new = baseline.cells[key], current.cells[key]
        if old.verdict != new.verdict or divergence_ids(old) != divergence_ids(new):
            continue
        old_r, new_r = _ratios(old.comparisons), _ratios(new.comparisons)
        for k in sorted(set(old_r) & set(new_r)):
            o, n = _floored(old_r[k]), _floored(new_r[k])
            if o == n:
                continue
            if n > DRIFT_FACTOR * o or o > DRIFT_FACTOR * n:
                out.append(Drift(key[0], key[1], k[0], k[1], k[2], old_r[k], new_r[k], new.verdict))
    return out


def lost_measurements(baseline: Merged, current: Merged) -> list[tuple[tuple[str, str], list[tuple[int, str, str]]]]:
    """Per cell present in both runs with the same verdict: the (step, op, observable) comparisons the
    baseline made and the current run did not, sorted; cells that lost none are left out. A cell whose
    verdict changed is reported as a behaviour change instead."""
    out = []
    for key in sorted(set(baseline.cells) & set(current.cells)):
        old, new = baseline.cells[key], current.cells[key]
        if old.verdict != new.verdict:
            continue
        lost = sorted({_key(c) for c in old.comparisons} - {_key(c) for c in new.comparisons})
        if lost:
            out.append((key, lost))
    return out


def unbacked_verdicts(records) -> list[str]:
    """Records whose verdict their own evidence contradicts, one line each: a ``conforms``/``quirk``/
    ``known_bug`` cell that compared nothing and matched no documented refusal (a divergence with
    ``raises``), or a ``conforms``/``quirk`` cell with a failing comparison (a quirk is matched exactly by
    the oracle with its options; only a known bug's bounded expected failure may fail a comparison)."""
    out = []
    for r in records:
        if r.verdict not in ("conforms", "quirk", "known_bug"):
            continue
        if not r.comparisons and not any(d.get("raises") for d in r.divergences or []):
            out.append(f"{r.case_id} on {r.adapter} is {r.verdict} but compared no value and matched no "
                       f"documented refusal: a verdict without evidence")
        elif r.verdict != "known_bug" and not all(c.get("passed") for c in r.comparisons):
            bad = [c for c in r.comparisons if not c.get("passed")]
            out.append(f"{r.case_id} on {r.adapter} is {r.verdict} but {len(bad)} of its comparisons failed "
                       f"(e.g. step {bad[0].get('step', 0)} {bad[0].get('observable')}): the verdict contradicts "
                       f"its evidence")
    return out


@dataclass
class GateResult:
    """The gate's answer: ``passed`` and the reasons, one line each."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    diff: Diff | None = None
    drift: list[Drift] = field(default_factory=list)

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
                "diff": self.diff.to_dict() if self.diff else None, "drift": [d.to_dict() for d in self.drift],
                "noise_floor": NOISE_FLOOR, "drift_factor": DRIFT_FACTOR}


def rename_adapters(merged: Merged, mapping: dict[str, str]) -> Merged:
    """A copy of ``merged`` with adapters renamed OLD -> NEW (for cross-API comparisons)."""
    records = [r.model_copy(update={"adapter": mapping.get(r.adapter, r.adapter)}) for r in merged.records]
    out = merge(records, merged.bad_lines)
    out.conflicts = merged.conflicts + out.conflicts
    out.shards = merged.shards
    return out


def _first_line(text: str | None) -> str:
    return (text or "").splitlines()[0][:300] if text else ""


def _shard_problems(shard: Shard, allow_partial: bool, allow_legacy: bool) -> tuple[list[str], list[str]]:
    """(problems, notes) of one shard's evidence: manifest, ending, records, selection."""
    problems, notes = [], []
    f = shard.file
    problems += [f"{s}" for s in shard.structure]
    if shard.legacy:
        if allow_legacy:
            notes.append(f"{f}: legacy shard without a run manifest accepted (--allow-legacy-shards): "
                         f"its completeness and catalogue are unchecked")
        else:
            problems.append(f"{f}: no run manifest (written before bnconform recorded them, or not by its pytest "
                            f"plugin): whether the run was complete cannot be checked; rerun it, or pass "
                            f"--allow-legacy-shards")
        return problems, notes
    if shard.end is None:
        problems.append(f"{f}: incomplete: the run never finished (no run_end line: it was killed, crashed or is "
                        f"still running); {len(shard.records)} record(s) written")
    elif shard.end.how != "complete":
        problems.append(f"{f}: the run ended {shard.end.how}"
                        + (f": {_first_line(shard.end.detail)}" if shard.end.detail else "")
                        + f"; {len(shard.records)} record(s) written")
    if shard.collected is None:
        problems.append(f"{f}: no list of collected cells (collection never finished)")
        return problems, notes
    missing = shard.missing_records()
    if missing:
        problems.append(f"{f}: {len(missing)} of {len(shard.collected.cells)} collected cell(s) have no record, "
                        f"e.g. {', '.join(missing[:3])}")
    collected = set(shard.collected.cells)
    foreign = [r.nodeid for r in shard.records if r.nodeid not in collected]
    if foreign:
        problems.append(f"{f}: {len(foreign)} record(s) of cells this run did not collect, e.g. {foreign[0]}")
    for err in shard.collected.catalogue_errors:
        problems.append(f"{f}: the catalogue had errors when this run started: {err}")
    if shard.collected.partial:
        sel = shard.start.selection if shard.start else {}
        how = "; ".join(f"{k} {v!r}" for k, v in (("-k", sel.get("keyword")), ("-m", sel.get("markexpr")),
                                                      ("paths", sel.get("paths"))) if v)
        text = (f"{f}: partial run: {len(shard.collected.cells)} of the {shard.collected.full} cells of its "
                f"adapters were selected ({shard.collected.not_selected_count} not selected"
                + (f"; {how}" if how else "") + ")")
        if allow_partial:
            notes.append(text + " — accepted (--allow-partial)")
        else:
            problems.append(text + "; pass --allow-partial if a partial run is intended")
    return problems, notes


def _evidence(m: Merged, label: str, allow_partial: bool, allow_legacy: bool) -> tuple[list[str], list[str]]:
    """(problems, notes) about one merged results set as evidence (``label``: "" or "baseline: ")."""
    problems, notes = [], []
    if not m.cells:
        problems.append(f"{label}no result cells at all: nothing was tested"
                        if not label else f"{label}no result cells at all (empty or missing baseline)")
    problems += [f"{label}unreadable result line {bad}" for bad in m.bad_lines]
    problems += [f"{label}conflicting shards for {a.case_id} on {a.adapter}: {a.verdict} (env {a.env}) vs "
                 f"{b.verdict} (env {b.env})" for a, b in m.conflicts]
    for shard in m.shards:
        p, n = _shard_problems(shard, allow_partial, allow_legacy)
        problems += [label + x for x in p]
        notes += [label + x for x in n]
        if shard.records and not any(r.comparisons for r in shard.records) and len(m.shards) > 1:
            problems.append(f"{label}{shard.file}: no value was compared in any of its {len(shard.records)} cells "
                            f"(every one unsupported or errored): this run measured nothing")
    problems += [label + p for p in _catalogue_disagreements([s for s in m.shards if s.start is not None])]
    problems += [label + p for p in unbacked_verdicts(m.records)]
    if m.cells and not any(r.comparisons for r in m.records):
        problems.append(f"{label}no value was compared in any cell: nothing was measured "
                        f"({', '.join(f'{v} {n}' for v, n in sorted(m.counts().items()))})")
    return problems, notes


def _catalogue_disagreements(shards: list[Shard]) -> list[str]:
    """Pairs of shards judged with different versions of a file both depend on (a case file, or the
    expectations of a framework both ran). Shards of different frameworks may carry different versions of
    each other's expectations: neither depends on the other's. Shards without a per-file record are compared
    by their whole digest."""
    out = []
    for i, a in enumerate(shards):
        for b in shards[i + 1:]:
            fa, fb = a.start.catalogue_files, b.start.catalogue_files
            if fa is None or fb is None:
                differ = a.start.catalogue_digest != b.start.catalogue_digest
                what = "catalogue digests"
            else:
                cases = {k for k in set(fa) | set(fb) if not k.startswith("expectations/")}
                shared = cases | (set(fa) & set(fb))
                diff = catalogue_changes({k: v for k, v in fa.items() if k in shared},
                                         {k: v for k, v in fb.items() if k in shared})
                differ, what = bool(diff), ", ".join(diff[:5])
            if differ:
                out.append(f"the shards were run on different catalogues: {a.file} vs {b.file} ({what})")
    return out


def evaluate(current: Merged, baseline: Merged | None = None, require_frameworks: list[str] | None = None, *,
             allow_partial: bool = False, allow_legacy: bool = False,
             disk_catalogue: tuple[str, str, list[Path]] | None = None) -> GateResult:
    """Apply the gate's rules (module docstring) to merged results.

    ``disk_catalogue``: ``(where, digest, dirs)`` of the catalogue on disk (a shard with a per-file record
    is stale when a case file, or an expectations file of its own groups, differs), or None
    when it is not visible. Shard checks apply to ``Merged.shards`` (results
    merged from bare records, without files, have none).
    """
    res = GateResult()
    p, n = _evidence(current, "", allow_partial, allow_legacy)
    res.problems += p
    res.notes += n
    if disk_catalogue is not None:
        where, digest, dirs = disk_catalogue
        on_disk: dict[tuple[str, ...], dict[str, str]] = {}  # per set of groups: read and hashed once
        for s in current.shards:
            if s.start is None:
                continue
            if s.start.catalogue_files is None:
                stale = [] if s.start.catalogue_digest == digest else ["(no per-file record: the whole digest differs)"]
            else:
                groups = tuple(s.start.groups)
                if groups not in on_disk:
                    on_disk[groups] = catalogue_files(dirs, list(groups))
                stale = catalogue_changes(s.start.catalogue_files, on_disk[groups])
            if stale:
                res.problems.append(f"{s.file}: run on another catalogue than the one on disk ({where}): "
                                    f"stale results, or the cases changed since: {', '.join(stale[:5])}"
                                    + (f" and {len(stale) - 5} more" if len(stale) > 5 else ""))
    if baseline is not None:
        p, n = _evidence(baseline, "baseline: ", allow_partial, allow_legacy)
        res.problems += p
        res.notes += n
        b_digests = {s.start.catalogue_digest for s in baseline.shards if s.start}
        c_digests = {s.start.catalogue_digest for s in current.shards if s.start}
        if b_digests and c_digests and b_digests != c_digests:
            res.notes.append("the baseline was run on another catalogue (case changes are listed below)")

    d = diff(baseline, current) if baseline is not None else None
    res.diff = d
    changed = d.changed_cells() if d else {}
    for r in sorted(current.records, key=lambda r: r.cell):
        if r.verdict in FAILING:
            was = changed.get(r.cell)
            since = (f" [baseline: {was.old_verdict}]" if was else
                     " [baseline: same]" if baseline is not None and r.cell in baseline.cells else "")
            res.problems.append(f"{r.verdict}: {r.case_id} on {r.adapter} ({r.framework} {r.framework_version})"
                                f"{since}: {_first_line(r.reason)}")

    gone = unreproduced_divergences(current.records)
    if allow_partial:
        res.notes += [f"not checked (--allow-partial: the selection may hold none of its reproducing cells): {g}"
                      for g in gone]
    else:
        res.problems += gone

    fw_of = {r.adapter: r.framework for r in current.records}

    def framework_check(fw: str, why: str) -> None:
        cells = [r for r in current.records if r.framework == fw or r.framework.split(".")[0] == fw]
        if not cells:
            res.problems.append(f"{why} {fw!r} produced no results (not installed, failed to import, "
                                f"or its env did not run)")
        elif all(r.verdict == "unsupported" for r in cells):
            res.problems.append(f"{why} {fw!r}: every one of its {len(cells)} cells is unsupported")

    required = list(dict.fromkeys(require_frameworks or []))
    for fw in required:
        framework_check(fw, "required framework")
    if baseline is not None:
        tested = sorted({fw_of.get(r.adapter, r.framework) for r in baseline.records if r.verdict != "unsupported"})
        for fw in tested:
            if fw not in required:
                framework_check(fw, "framework of the baseline")

    if d is not None:
        for c in d.changed:
            if c.new_verdict not in FAILING:  # failing ones are listed once above
                res.problems.append("behaviour changed: " + c.text())
        for case in d.removed_cases:
            res.problems.append(f"case removed since the baseline: {case}")
        for adapter in d.removed_adapters:
            res.problems.append(f"adapter removed since the baseline: {adapter}")
        for case, adapter, verdict in d.removed_cells:
            res.problems.append(f"cell removed since the baseline: {case} on {adapter} (was {verdict})")
        res.notes += [f"new case: {c}" for c in d.new_cases] + [f"new adapter: {a}" for a in d.new_adapters]
        res.notes += [f"version {a}: {o} -> {n}" for a, o, n in d.version_changes]
        for (case, adapter), lost in lost_measurements(baseline, current):
            what = ", ".join(f"step {st} {op} {obs}".replace("  ", " ") for st, op, obs in lost[:4])
            res.problems.append(f"measured less than the baseline: {case} on {adapter}: {len(lost)} comparison(s) "
                                f"the baseline made are missing ({what}" + (", ..." if len(lost) > 4 else "")
                                + "): an adapter that stopped observing, or a case that checks less")
        res.drift = drift(baseline, current)
        for x in res.drift:
            if x.worse:
                res.problems.append(f"magnitude drift (> x{DRIFT_FACTOR:g} above the noise floor "
                                    f"{NOISE_FLOOR:g}): {x.text()}")
            else:
                res.notes.append(f"error shrank (> x{DRIFT_FACTOR:g}): {x.text()}")
    return res


def add_parser(sub) -> None:
    """Register ``bnconform gate`` on an argparse sub-parser collection."""
    p = sub.add_parser("gate", help="gate a run: complete evidence, failing cells, behaviour changes and magnitude "
                                    "drift against a baseline, required frameworks")
    p.add_argument("current", nargs="+", help="current results files or directories of *.jsonl")
    p.add_argument("--baseline", nargs="+", default=None, help="baseline results files or directories")
    p.add_argument("--require-frameworks", default="", help="comma-separated import names that must have tested cells")
    p.add_argument("--map-adapter", action="append", nargs=2, default=[], metavar=("OLD", "NEW"),
                   help="compare baseline adapter OLD with current adapter NEW (names may contain '=')")
    p.add_argument("--cases", action="append", default=[], metavar="DIR",
                   help="the catalogue the current results must come from is ./cases when present, else the "
                        "built-in one; --cases adds a directory to it, as bnconform run --cases DIR did "
                        "(repeatable; a sibling expectations/ of each is included)")
    p.add_argument("--allow-partial", action="store_true",
                   help="accept runs that selected part of the catalogue (-k, -m, paths): reported as notes")
    p.add_argument("--allow-legacy-shards", action="store_true",
                   help="accept shards written without a run manifest (their completeness is unchecked)")
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
    for d in args.cases:
        if not Path(d).is_dir():
            print(f"bnconform gate: --cases {d}: not a directory", file=sys.stderr)
            return 2
    dirs = [Path(d) for d in args.cases]
    try:
        base = Path("cases") if Path("cases").is_dir() else location().check().cases
        dirs.insert(0, base)
    except BuiltinMissing as exc:
        print(f"bnconform gate: {exc}", file=sys.stderr)
    dirs = list({d.resolve(): d for d in dirs}.values())  # the same directory twice counts once
    disk = None
    if dirs:
        every = [x for d in dirs for x in catalogue_dirs(d)]
        disk = (", ".join(map(str, dirs)), catalogue_digest(every), every)
    result = evaluate(current, baseline, required, allow_partial=args.allow_partial,
                      allow_legacy=args.allow_legacy_shards, disk_catalogue=disk)
    if disk is None:
        result.notes.append("no catalogue on disk to check the results against (see --cases)")
    print(result.text())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result.to_dict(), fh, indent=2)
    return 0 if result.passed else 1
