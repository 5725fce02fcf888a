"""Result records: one JSON line per (case, adapter) cell.

Records are written by ONE process (the pytest controller, also under xdist)
as complete lines, flushed per line, so a crash never leaves a half record of
an earlier cell. ``read_results`` validates every line against the schema and
reports bad lines by file and line number instead of giving up.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCHEMA_VERSION = 1
VERDICTS = ("conforms", "quirk", "known_bug", "fails", "unsupported", "error")
#: Verdicts that make a gating run fail.
FAILING = frozenset({"fails", "error"})

Verdict = Literal["conforms", "quirk", "known_bug", "fails", "unsupported", "error"]


class ResultRecord(BaseModel):
    """One cell of the conformance matrix (see README "Results format")."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    case_id: str
    case_file: str
    theme: str
    title: str
    behaviour: str
    tags: list[str] = Field(default_factory=list)
    sources: list[dict] = Field(default_factory=list)
    adapter: str
    framework: str
    framework_version: str
    device: str = "cpu"
    verdict: Verdict
    reason: str | None = None
    divergences: list[dict] = Field(default_factory=list)
    comparisons: list[dict] = Field(default_factory=list)
    canonical_comparisons: list[dict] = Field(default_factory=list)
    not_observed: list[str] = Field(default_factory=list)
    duration_s: float = 0.0
    env: str = "local"
    python: str = Field(default_factory=lambda: platform.python_version())
    platform: str = Field(default_factory=lambda: f"{sys.platform}-{platform.machine()}")
    timestamp: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    nodeid: str | None = None
    #: bnconform commit that produced the record ($BNCONFORM_COMMIT, set by the pytest plugin).
    commit: str | None = Field(default_factory=lambda: os.environ.get("BNCONFORM_COMMIT") or None)

    @property
    def cell(self) -> tuple[str, str]:
        return (self.case_id, self.adapter)


def current_env() -> str:
    """Name of the environment producing results: ``$BNCONFORM_ENV`` (tox sets
    it to the env name), else ``"local"``."""
    return os.environ.get("BNCONFORM_ENV", "local")


class ResultsWriter:
    """Append records to a JSON-lines file, one flushed line per record."""

    def __init__(self, path: str | Path, truncate: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w" if truncate else "a", encoding="utf-8")

    def write(self, record: ResultRecord | dict) -> None:
        data = record.model_dump(mode="json") if isinstance(record, ResultRecord) else record
        self._fh.write(json.dumps(data, allow_nan=False, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class BadLine(BaseModel):
    """A results line that could not be used: file, 1-based line, why."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


def read_results(paths: list[str | Path]) -> tuple[list[ResultRecord], list[BadLine]]:
    """Read records from files or directories (``*.jsonl`` inside).

    Never raises for bad content: truncated JSON, unknown schema versions and
    invalid records come back as :class:`BadLine` entries, the rest as records.
    Raises ``FileNotFoundError`` if a named path does not exist.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"results path {p} does not exist")
        files.extend(sorted(p.glob("*.jsonl")) if p.is_dir() else [p])
    records, bad = [], []
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    bad.append(BadLine(file=str(f), line=n, message=f"not JSON ({exc.msg}); truncated write?"))
                    continue
                if not isinstance(data, dict):
                    bad.append(BadLine(file=str(f), line=n, message="not a JSON object"))
                    continue
                version = data.get("schema_version")
                if version != SCHEMA_VERSION:
                    bad.append(BadLine(file=str(f), line=n,
                                       message=f"schema_version {version!r}, this bnconform reads {SCHEMA_VERSION}"))
                    continue
                try:
                    records.append(ResultRecord.model_validate(data))
                except ValidationError as exc:
                    e = exc.errors()[0]
                    bad.append(BadLine(file=str(f), line=n,
                                       message=f"field {'.'.join(map(str, e['loc']))}: {e['msg']}"))
    return records, bad
