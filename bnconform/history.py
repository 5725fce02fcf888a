"""``bnconform history``: BatchNorm behaviour across framework releases (issue 17).

Reads the release sweep's shards (``reports/sweep/<framework>-<release>.jsonl.gz``,
written by :mod:`bnconform.sweep`; the shard's ``env`` names the sweep framework
and release) and builds, per sweep framework, every (case, adapter) cell's
*state* across the releases in PEP 440 order: its verdict and the ids of the
documented divergences it shows (``unsupported`` cells are one state whatever
their reason). A *change* is a cell whose state differs between two consecutive
releases (or a row that appears or disappears). Each change carries its
explanation: the divergence entries (id, kind, version range, source, upstream
issue, finding script) that start or stop holding, the ``unsupported`` reason,
or — for ``fails``/``error`` — none: those are listed as UNEXPLAINED.

Outputs (no code shared with ``bnconform.report``; the template is its own,
Jinja2 autoescaped):

* ``--out`` (default ``reports/history.html``): per framework a case x adapter
  table of verdicts across releases, the release where a cell changed
  highlighted, with the change and its explanation on hover and in the list below.
* ``--changelog`` (default ``reports/bn-changes.md``): "BatchNorm behaviour
  changes by release", a markdown changelog per framework and release.

Exit 0 when written, 1 when some change or cell is unexplained (``fails``/``error``
in any release), 2 when no shard could be read.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from packaging.version import InvalidVersion, Version

from .results import FAILING, ResultRecord, read_shards

#: ``<framework>-<release>`` with a PEP 440 release (the sweep's env name)
_ENV = re.compile(r"^(?P<fw>.+?)-(?P<rel>\d[^-]*)$")
SHORT = {"conforms": "ok", "quirk": "Q", "known_bug": "KB", "fails": "FAIL", "unsupported": "–", "error": "ERR"}


@dataclass(frozen=True)
class State:
    verdict: str
    divergences: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.verdict + (f" ({', '.join(self.divergences)})" if self.divergences else "")


def state_of(r: ResultRecord | None) -> State | None:
    if r is None:
        return None
    return State(r.verdict, tuple(sorted(str(d.get("id")) for d in r.divergences)))


@dataclass
class Change:
    framework: str
    case_id: str
    adapter: str
    before: str  #: release
    after: str
    old: State | None
    new: State | None
    #: explanation lines (the divergences that start/stop, the unsupported reason)
    why: list[str] = field(default_factory=list)
    #: divergence entries (dicts as recorded) that start or stop holding
    entries: list[dict] = field(default_factory=list)
    unexplained: bool = False

    @property
    def text(self) -> str:
        old = self.old.label if self.old else "(row absent)"
        new = self.new.label if self.new else "(row absent)"
        return f"{old} → {new}"


@dataclass
class Series:
    """One sweep framework: its releases (PEP 440 order) and every cell's record per release."""

    framework: str
    releases: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], dict[str, ResultRecord]] = field(default_factory=lambda: defaultdict(dict))
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  #: release -> adapter -> framework_version
    changes: list[Change] = field(default_factory=list)
    failing: list[ResultRecord] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  #: release -> catalogue digest it was judged with

    @property
    def stale(self) -> list[str]:
        """Releases judged with another catalogue (the cases + this framework's expectations:
        ``RunStart.judged_with``) than the framework's newest-started shard: their verdicts predate an
        expectation edit; a change next to them may be the edit, not the framework (re-sweep them:
        ``bnconform sweep --framework F --version V``)."""
        if not self.digests:
            return []
        newest = self.digests[max(self.digests, key=lambda r: self.started.get(r, ""))]
        return [r for r in self.releases if self.digests.get(r) not in (None, newest)]

    started: dict[str, str] = field(default_factory=dict)

    def changed_at(self, cell: tuple[str, str], release: str) -> Change | None:
        for c in self.changes:
            if (c.case_id, c.adapter) == cell and c.after == release:
                return c
        return None


def _entry_line(d: dict) -> str:
    bits = [f"{d.get('kind')} `{d.get('id')}`", f"versions `{d.get('versions') or 'all'}`"]
    if d.get("issue"):
        bits.append(f"issue {d['issue']}")
    if d.get("finding"):
        bits.append(f"finding {d['finding']}")
    src = str(d.get("source", ""))
    src = src if len(src) <= 240 else src[:240] + "…"
    return "; ".join(bits) + f" — {d.get('summary', '')} (source: {src}; {d.get('ref', '')})"


def explain(fw: str, cell: tuple[str, str], before: str, after: str, a: ResultRecord | None,
            b: ResultRecord | None) -> Change:
    ch = Change(fw, cell[0], cell[1], before, after, state_of(a), state_of(b))
    da = {str(d.get("id")): d for d in (a.divergences if a else [])}
    db = {str(d.get("id")): d for d in (b.divergences if b else [])}
    for k in sorted(set(da) ^ set(db)):
        d = db.get(k) or da[k]
        verb = "starts holding" if k in db else "stops holding"
        ch.entries.append(d)
        ch.why.append(f"{verb}: {_entry_line(d)}")
    for rec, when in ((a, before), (b, after)):
        if rec is not None and rec.verdict == "unsupported" and rec.reason:
            ch.why.append(f"unsupported in {when}: {rec.reason.splitlines()[0]}")
    if b is None:
        ch.why.append(f"the row is not run in {after}")
    elif a is None:
        ch.why.append(f"the row first runs in {after}")
    if b is not None and b.verdict in FAILING:
        ch.unexplained = True
        ch.why.append(f"UNEXPLAINED {b.verdict} in {after}: {(b.reason or '').splitlines()[0] if b.reason else ''}")
    if a is not None and b is not None and a.verdict in FAILING and b.verdict not in FAILING:
        ch.why.append(f"recovers from {a.verdict} in {before} (that release's cells are listed as failing)")
    if not ch.why:  # the same divergence set and no unsupported: a verdict change no entry explains
        ch.unexplained = True
        ch.why.append("UNEXPLAINED: the verdict changed with the same divergence set")
    return ch


def _release_key(r: str):
    try:
        return (0, Version(r))
    except InvalidVersion:
        return (1, r)


def load(paths: list[str | Path]) -> dict[str, Series]:
    """The sweep shards under ``paths``, grouped by sweep framework (from each shard's env name)."""
    series: dict[str, Series] = {}
    for shard in read_shards(paths):
        env = shard.start.env if shard.start else (shard.records[0].env if shard.records else Path(shard.file).stem)
        m = _ENV.match(env)
        if not m:
            print(f"bnconform history: {shard.file}: env {env!r} is not <framework>-<release>: skipped",
                  file=sys.stderr)
            continue
        fw, rel = m["fw"], m["rel"]
        s = series.setdefault(fw, Series(fw))
        s.releases.append(rel)
        s.versions[rel] = {}
        if shard.start is not None:
            s.digests[rel] = shard.start.judged_with
            s.started[rel] = shard.start.started
        if shard.end is None or shard.end.how != "complete":
            s.incomplete.append(f"{shard.file}: run {'did not finish' if shard.end is None else shard.end.how}")
        for r in shard.records:
            s.cells[r.cell][rel] = r
            s.versions[rel][r.adapter] = r.framework_version
            if r.verdict in FAILING:
                s.failing.append(r)
    for s in series.values():
        s.releases.sort(key=_release_key)
        for cell, by_rel in sorted(s.cells.items()):
            for before, after in zip(s.releases, s.releases[1:]):
                a, b = by_rel.get(before), by_rel.get(after)
                if state_of(a) != state_of(b):
                    s.changes.append(explain(s.framework, cell, before, after, a, b))
    return dict(sorted(series.items()))


def grouped_changes(s: Series) -> list[dict]:
    """Changes of one framework grouped per release step and (adapter, old -> new, explanation):
    the changelog's items."""
    groups: dict[tuple, dict] = {}
    for c in s.changes:
        key = (c.before, c.after, c.adapter, c.text, tuple(c.why) if c.unexplained else
               tuple(w for w in c.why if not w.startswith("unsupported in")))
        g = groups.setdefault(key, {"before": c.before, "after": c.after, "adapter": c.adapter, "text": c.text,
                                    "why": c.why, "cases": [], "unexplained": c.unexplained,
                                    "entries": c.entries})
        g["cases"].append(c.case_id)
    return sorted(groups.values(), key=lambda g: (_release_key(g["after"]), g["adapter"], g["text"]))


def changelog(series: dict[str, Series]) -> str:
    out = ["# BatchNorm behaviour changes by release", "",
           "Generated by `bnconform history` from the release sweep's shards (`reports/sweep/`, "
           "`bnconform sweep`). Per framework, every release whose BatchNorm behaviour differs from the "
           "previous swept release, judged against the float64 oracle on the same catalogue: which cells "
           "changed verdict or documented divergence, and the entry of `expectations/` that explains it "
           "(its PEP 440 range is the boundary). \"→\" reads old → new.", ""]
    for fw, s in series.items():
        out += [f"## {fw}", "", f"Releases swept: {', '.join(s.releases)}.", ""]
        if s.incomplete:
            out += [f"- WARNING {w}" for w in s.incomplete] + [""]
        if s.stale:
            out += [f"- WARNING judged with an older catalogue/expectations than the newest {fw} shard (re-sweep "
                    f"before reading changes next to them): {', '.join(s.stale)}", ""]
        groups = grouped_changes(s)
        if not groups:
            out += ["No behaviour change between consecutive releases.", ""]
        step = None
        for g in groups:
            if (g["before"], g["after"]) != step:
                step = (g["before"], g["after"])
                out += ["", f"### {g['after']} (from {g['before']})", ""]
            cases = ", ".join(f"`{c}`" for c in sorted(g["cases"]))
            flag = "**UNEXPLAINED** " if g["unexplained"] else ""
            out.append(f"- {flag}`{g['adapter']}`: {g['text']} on {len(g['cases'])} case(s): {cases}")
            out += [f"  - {w}" for w in g["why"] if not w.startswith("unsupported in")]
            uns = [w for w in g["why"] if w.startswith("unsupported in")]
            if uns:
                out.append(f"  - {uns[0]}")
        still = sorted({(r.case_id, r.adapter, r.verdict) for r in s.failing})
        if still:
            out += ["", f"Cells failing in some release ({len(s.failing)} records):", ""]
            out += [f"- {v}: `{c}` on `{a}`" for c, a, v in still]
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def render(series: dict[str, Series]) -> str:
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    tables = []
    for fw, s in series.items():
        rows = []
        for cell in sorted(s.cells):
            by_rel = s.cells[cell]
            tds = []
            for rel in s.releases:
                r = by_rel.get(rel)
                ch = s.changed_at(cell, rel)
                tip = []
                if r is not None:
                    tip.append(f"{r.verdict} — {r.adapter} {r.framework_version}")
                    tip += [f"{d.get('kind')} {d.get('id')} [{d.get('versions') or 'all versions'}]"
                            for d in r.divergences]
                    if r.reason and r.verdict != "quirk":
                        tip.append(r.reason.splitlines()[0][:300])
                if ch:
                    tip = [f"CHANGED since {ch.before}: {ch.text}"] + ch.why + tip
                tds.append({"verdict": r.verdict if r else "absent",
                            "short": SHORT.get(r.verdict, r.verdict) if r else "",
                            "changed": ch is not None, "unexplained": bool(ch and ch.unexplained),
                            "tip": "\n".join(tip)})
            rows.append({"case": cell[0], "adapter": cell[1], "tds": tds,
                         "changes": sum(t["changed"] for t in tds)})
        tables.append({"framework": fw, "releases": s.releases, "rows": rows, "groups": grouped_changes(s),
                       "incomplete": s.incomplete, "stale": s.stale, "failing": len(s.failing), "changed_rows":
                       sum(1 for r in rows if r["changes"])})
    return env.get_template("history.html.j2").render(tables=tables, short=SHORT)


def run(args) -> int:
    try:
        series = load(args.paths)
    except FileNotFoundError as exc:
        print(f"bnconform history: {exc}", file=sys.stderr)
        return 2
    if not series:
        print("bnconform history: no sweep shard read", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(series), encoding="utf-8")
    Path(args.changelog).parent.mkdir(parents=True, exist_ok=True)
    Path(args.changelog).write_text(changelog(series), encoding="utf-8")
    bad = 0
    for fw, s in series.items():
        n_unexp = sum(c.unexplained for c in s.changes)
        bad += n_unexp + len(s.failing) + len(s.incomplete)
        print(f"{fw:14} {len(s.releases):3} releases {len(s.cells):5} cells {len(s.changes):4} changes "
              f"({n_unexp} unexplained), {len(s.failing)} fails/error records, {len(s.incomplete)} incomplete, "
              f"{len(s.stale)} judged with an older catalogue")
    print(f"bnconform history: -> {args.out}, {args.changelog}")
    return 1 if bad else 0


def add_parser(sub) -> None:
    """Register ``bnconform history`` on an argparse sub-parser collection."""
    p = sub.add_parser("history", help="verdicts across framework releases from the sweep's shards, and the "
                                       "'BatchNorm behaviour changes by release' changelog")
    p.add_argument("paths", nargs="*", default=["reports/sweep"], help="sweep shards or folders (default: "
                                                                        "reports/sweep)")
    p.add_argument("--out", default="reports/history.html", help="HTML output (default: %(default)s)")
    p.add_argument("--changelog", default="reports/bn-changes.md", help="markdown changelog (default: %(default)s)")
    p.set_defaults(func=run)
