"""The report's "explored" view: what ``bnconform explore`` runs found, read from their JSON summaries.

``bnconform explore --out DIR`` writes ``DIR/explore-<time>-s<seed>.json``
(:func:`bnconform.explore.summary`): per explored adapter, the generated cases
that ran and every undocumented divergence (a ``fails`` or ``error`` cell that
no documented expectation explains) with its shrunk minimal case.
``bnconform report --explored DIR`` reads every such file in DIR (or a file
named directly) and the page lists them, run by run, and per adapter over all
runs. The summaries are validated here, at the boundary (:class:`Summary`): an
unreadable one is listed in the view, never dropped silently; a directory
that does not exist or holds no summary is said so (the view then says that
no exploration run was merged).

This module reads and shapes; ``parity.html.j2`` renders (autoescaped).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

#: The summaries ``bnconform explore`` writes into its ``--out`` directory.
SUMMARY_GLOB = "explore-*.json"


class _Read(BaseModel):
    model_config = ConfigDict(extra="ignore")  # fields a newer explorer adds do not make a summary unreadable


class FindingSummary(_Read):
    """One undocumented divergence: its shrunk minimal case (``explore.summary()``'s ``findings`` entries)."""

    case_id: str
    verdict: str
    worst: str | None = None
    signature: str | None = None
    reproduce: str | None = None


class AdapterSummary(_Read):
    """One explored adapter of a run."""

    adapter: str
    framework: str | None = None
    framework_version: str | None = None
    examples: int
    seconds: float | None = None
    stopped_by: str | None = None
    findings: list[FindingSummary] = []


class RunSummary(_Read):
    """How the run was made."""

    started: str | None = None
    seed: int | None = None
    max_examples: int | None = None
    time_budget: float | None = None
    command: str | None = None


class Summary(_Read):
    """An ``explore-*.json`` file."""

    run: RunSummary
    cases_file: str | None = None
    adapters: list[AdapterSummary]


@dataclass
class Explored:
    """The exploration summaries given to the report: ``runs`` as (file, summary), oldest first; ``problems``:
    one line per path that gave none or a file that could not be read."""

    runs: list[tuple[str, Summary]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def per_adapter(self) -> list[dict]:
        """Per adapter (and framework version) over every run: runs, generated cases, undocumented divergences."""
        rows: dict[tuple, dict] = {}
        for _, s in self.runs:
            for a in s.adapters:
                row = rows.setdefault((a.adapter, a.framework_version), {
                    "adapter": a.adapter, "version": a.framework_version, "runs": 0, "examples": 0, "divergences": 0})
                row["runs"] += 1
                row["examples"] += a.examples
                row["divergences"] += len(a.findings)
        return sorted(rows.values(), key=lambda r: (r["adapter"], r["version"] or ""))


def _files(path: Path) -> list[Path]:
    return sorted(path.glob(SUMMARY_GLOB)) if path.is_dir() else [path]


def load_explored(paths: list[str | Path]) -> Explored:
    """Read the exploration summaries under ``paths`` (directories of ``explore-*.json``, or files)."""
    out = Explored()
    for p in map(Path, paths):
        if not p.exists():
            out.problems.append(f"{p}: no such file or directory (no exploration run there)")
            continue
        files = _files(p)
        if not files:
            out.problems.append(f"{p}: no {SUMMARY_GLOB} in it (no exploration run there)")
        for f in files:
            try:
                out.runs.append((str(f), Summary.model_validate(json.loads(f.read_text(encoding="utf-8")))))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                out.problems.append(f"{f}: not a readable exploration summary ({first})")
    out.runs.sort(key=lambda fs: (fs[1].run.started or "", fs[0]))
    return out
