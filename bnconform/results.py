"""Result records: one JSON line per (case, adapter) cell, framed by a run manifest.

A shard (``reports/results/<env>.jsonl``) written by the pytest plugin reads::

    {"kind": "run_start", ...}      # written (file truncated) when the session starts
    {"kind": "collected", ...}      # the cell node ids collected, the full matrix size
    {...record...}                  # one per cell, flushed per line
    {"kind": "run_end", "how": "complete" | "interrupted" | "crashed" | "collection_error", ...}

A shard without its ``run_end`` line belongs to a run that was killed (or is
still running); a shard whose first line is not ``run_start`` was written
before manifests existed (*legacy*). :func:`read_shards` returns each file with
its manifest; the gate (:mod:`bnconform.gate`) judges completeness from it.

Records are written by ONE process (the pytest controller, also under xdist)
as complete lines, flushed per line, so a crash never leaves a half record of
an earlier cell. ``read_results`` validates every line against the schema and
reports bad lines by file and line number instead of giving up.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import platform
import sys
import zlib
from dataclasses import dataclass, field
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
    #: Build and runtime details that are not the version (cuDNN, CUDA, device, exporter stack):
    #: ``Adapter.framework_build()``; ``framework_version`` stays a PEP 440 version.
    framework_build: str | None = None
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
    #: ``--adapter`` target of a plug-in adapter (None for built-in and entry-point adapters):
    #: rerunning the cell needs it on the command line.
    plugin_adapter: str | None = None

    @property
    def cell(self) -> tuple[str, str]:
        return (self.case_id, self.adapter)


def current_env() -> str:
    """Name of the environment producing results: ``$BNCONFORM_ENV`` (tox sets
    it to the env name), else ``"local"``."""
    return os.environ.get("BNCONFORM_ENV", "local")


MANIFEST_VERSION = 1
#: How a run ended (``run_end.how``); a shard without ``run_end`` is *incomplete*.
RunEnding = Literal["complete", "interrupted", "crashed", "collection_error"]


class _Line(BaseModel):
    model_config = ConfigDict(extra="ignore")

    manifest_version: int = MANIFEST_VERSION


class RunStart(_Line):
    """First line of a shard: what this run is (written before anything is collected)."""

    kind: Literal["run_start"] = "run_start"
    env: str
    started: str
    suite_commit: str | None = None
    #: :func:`catalogue_digest` of ``catalogue_dirs`` (relative to the rootdir) at the start.
    catalogue_digest: str
    catalogue_dirs: list[str] = Field(default_factory=list)
    #: The files this run's verdicts depend on, ``{"cases/training.yaml": "<sha256 hex>", ...}``: every case
    #: file and the expectations files covering ``groups`` (:func:`catalogue_files`). None in shards written
    #: before it was recorded (their freshness is judged by ``catalogue_digest`` alone).
    catalogue_files: dict[str, str] | None = None
    #: The BUILTIN adapter groups of this run (``torch``, ``keras.jax``, ...): which expectations files matter.
    groups: list[str] = Field(default_factory=list)
    #: The selection: ``args`` (paths / node ids), ``keyword`` (-k), ``markexpr`` (-m),
    #: ``frameworks`` (--framework), ``adapters`` (--adapter), ``require_device``, ``timeout``.
    selection: dict = Field(default_factory=dict)
    python: str = Field(default_factory=lambda: platform.python_version())
    platform: str = Field(default_factory=lambda: f"{sys.platform}-{platform.machine()}")

    @property
    def judged_with(self) -> str:
        """A digest of the files this run's verdicts depend on (``catalogue_files``; the whole
        ``catalogue_digest`` for shards without that record): equal for two runs of one framework judged
        with the same cases and the same expectations of that framework."""
        if self.catalogue_files is None:
            return self.catalogue_digest
        return "files:" + hashlib.sha256(json.dumps(self.catalogue_files, sort_keys=True).encode()).hexdigest()


class Collected(_Line):
    """What was collected: ``cells`` (node ids) against the ``full`` matrix of the
    selected adapters over the whole catalogue; ``partial`` when they differ."""

    kind: Literal["collected"] = "collected"
    cells: list[str]
    full: int
    partial: bool
    #: Cells of the full matrix not collected (first 50) and their count.
    not_selected: list[str] = Field(default_factory=list)
    not_selected_count: int = 0
    catalogue_errors: list[str] = Field(default_factory=list)


class RunEnd(_Line):
    """Last line of a shard: how the run ended."""

    kind: Literal["run_end"] = "run_end"
    how: RunEnding
    detail: str | None = None
    exitstatus: int
    ended: str
    records: int
    collection_errors: list[str] = Field(default_factory=list)
    #: {adapter: "version (build)"} of the records written.
    framework_versions: dict[str, str] = Field(default_factory=dict)


MANIFEST_KINDS = {"run_start": RunStart, "collected": Collected, "run_end": RunEnd}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def catalogue_digest(dirs: list[str | Path]) -> str:
    """``sha256:<hex>`` over the catalogue files (``*.yaml``/``*.yml``) under ``dirs``.

    Each file contributes its path relative to its directory's parent (e.g.
    ``cases/training.yaml``; ``expectations/torch.yaml`` where such a directory
    is passed) and its bytes, in sorted order, so two checkouts of the same
    catalogue agree wherever they live. A directory that does not exist adds
    its name only (the digest still differs from one where it exists).
    """
    h = hashlib.sha256()
    for d in sorted(map(Path, dirs), key=lambda p: p.name):
        h.update(f"dir {d.name}\0".encode())
        if not d.is_dir():
            continue
        for f in sorted(p for p in d.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml")):
            rel = f.relative_to(d.parent).as_posix()
            data = f.read_bytes()
            h.update(f"file {rel} {len(data)}\0".encode())
            h.update(data)
    return "sha256:" + h.hexdigest()


def _expectation_groups(path: Path) -> list[str] | None:
    """The top-level ``groups`` of an expectations file (None when it has none or is not a YAML mapping)."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    groups = raw.get("groups") if isinstance(raw, dict) else None
    return [str(g) for g in groups] if isinstance(groups, list) else None


def catalogue_files(dirs: list[str | Path], groups: list[str] | None = None) -> dict[str, str]:
    """``{relpath: sha256 hex}`` of the catalogue files under ``dirs`` that a run of ``groups`` depends on.

    Paths are named as in :func:`catalogue_digest` (``cases/training.yaml``). Every file of a case directory
    counts; in a directory named ``expectations`` only the files whose top-level ``groups`` intersect
    ``groups`` count (a file without ``groups``, or one that does not parse, always counts). ``groups=None``:
    every file. This is what lets a shard of onnxruntime stay fresh when ``expectations/torch.yaml`` changes,
    while any change to a case, or to its own framework's expectations, makes it stale.
    """
    wanted = None if groups is None else set(groups)
    files: dict[str, str] = {}
    for d in map(Path, dirs):
        if not d.is_dir():
            continue
        for f in sorted(p for p in d.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml")):
            if wanted is not None and d.name == "expectations":
                covers = _expectation_groups(f)
                if covers is not None and not wanted & set(covers):
                    continue
            files[f.relative_to(d.parent).as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return files


def catalogue_changes(recorded: dict[str, str], now: dict[str, str]) -> list[str]:
    """The files that differ between two :func:`catalogue_files` maps: ``changed X``, ``added X`` (in ``now``
    only), ``removed X`` (in ``recorded`` only), sorted by path."""
    out = []
    for k in sorted(set(recorded) | set(now)):
        if k not in now:
            out.append(f"removed {k}")
        elif k not in recorded:
            out.append(f"added {k}")
        elif recorded[k] != now[k]:
            out.append(f"changed {k}")
    return out


def catalogue_dirs(cases: str | Path) -> list[Path]:
    """The directories a catalogue digest covers: ``cases`` and, where it exists,
    the sibling ``expectations/`` (expected divergences kept as data)."""
    cases = Path(cases)
    dirs = [cases]
    if (cases.parent / "expectations").is_dir():
        dirs.append(cases.parent / "expectations")
    return dirs


class ResultsWriter:
    """Write a JSON-lines file, one flushed line per record or manifest line.

    ``truncate`` (default) empties the file at once: a run replaces the shard
    of the previous one from its first moment, so an old shard can never pass
    for the output of a run that then produced nothing.
    """

    def __init__(self, path: str | Path, truncate: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w" if truncate else "a", encoding="utf-8")

    def write(self, record: BaseModel | dict) -> None:
        data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
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


@dataclass
class Shard:
    """One results file: its records and its run manifest.

    ``start``/``collected``/``end`` are None where the line is missing:
    ``start`` None = a legacy shard (no manifest); ``end`` None = the run
    never finished writing (killed, crashed, or still running).
    ``structure`` lists framing problems (manifest lines out of place).
    """

    file: str
    records: list[ResultRecord] = field(default_factory=list)
    bad_lines: list[BadLine] = field(default_factory=list)
    start: RunStart | None = None
    collected: Collected | None = None
    end: RunEnd | None = None
    structure: list[str] = field(default_factory=list)

    @property
    def legacy(self) -> bool:
        return self.start is None

    @property
    def complete(self) -> bool:
        return self.end is not None and self.end.how == "complete"

    def missing_records(self) -> list[str]:
        """Collected cell node ids with no record."""
        if self.collected is None:
            return []
        have = {r.nodeid for r in self.records}
        return [c for c in self.collected.cells if c not in have]

    def status(self) -> str | None:
        """One line on why this shard is not a complete run (None when it is)."""
        if self.legacy:
            return "no run manifest (written before bnconform recorded them): completeness unknown"
        if self.end is None:
            return "the run never finished (no run_end line: killed, crashed, or still running)"
        if self.end.how != "complete":
            return f"the run ended {self.end.how}" + (f": {self.end.detail}" if self.end.detail else "")
        missing = self.missing_records()
        if missing:
            return f"{len(missing)} collected cell(s) have no record"
        return None


def _files(paths: list[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"results path {p} does not exist")
        # *.jsonl.gz: committed shards kept compact (the release sweep's reports/sweep/)
        files.extend(sorted([*p.glob("*.jsonl"), *p.glob("*.jsonl.gz")]) if p.is_dir() else [p])
    return files


def read_shards(paths: list[str | Path]) -> list[Shard]:
    """Read shards from files or directories (``*.jsonl`` and gzipped ``*.jsonl.gz`` inside), one per file.

    Never raises for bad content: truncated JSON, unknown schema versions and
    invalid records come back as :class:`BadLine` entries, misplaced manifest
    lines in ``Shard.structure``. Raises ``FileNotFoundError`` if a named path
    does not exist.
    """
    return [_read_shard(f) for f in _files(paths)]


def read_results(paths: list[str | Path]) -> tuple[list[ResultRecord], list[BadLine]]:
    """Records and bad lines of every shard under ``paths`` (see :func:`read_shards`)."""
    records, bad = [], []
    for shard in read_shards(paths):
        records += shard.records
        bad += shard.bad_lines
    return records, bad


def _lines(f: Path, bad: list[BadLine]):
    """``(number, text)`` of each line of ``f`` (gunzipped for ``.gz``). A compressed file that is truncated
    or corrupt ends the lines read so far with a :class:`BadLine` (the lines before it are kept)."""
    opener = gzip.open if f.suffix == ".gz" else open
    n = 0
    try:
        with opener(f, "rt", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                yield n, line
    except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        bad.append(BadLine(file=str(f), line=n + 1, message=f"unreadable from here on ({type(exc).__name__}: "
                                                             f"{exc}); a truncated or corrupt file?"))


def _read_shard(f: Path) -> Shard:
    shard = Shard(file=str(f))
    records, bad = shard.records, shard.bad_lines
    first = True
    for n, line in _lines(f, bad):
        if not line.strip():
            continue
        is_first, first = first, False
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append(BadLine(file=str(f), line=n, message=f"not JSON ({exc.msg}); truncated write?"))
            continue
        if not isinstance(data, dict):
            bad.append(BadLine(file=str(f), line=n, message="not a JSON object"))
            continue
        kind = data.get("kind")
        if kind is not None:
            model = MANIFEST_KINDS.get(kind)
            if model is None:
                bad.append(BadLine(file=str(f), line=n, message=f"unknown line kind {kind!r}"))
                continue
            try:
                item = model.model_validate(data)
            except ValidationError as exc:
                e = exc.errors()[0]
                bad.append(BadLine(file=str(f), line=n,
                                   message=f"{kind} field {'.'.join(map(str, e['loc']))}: {e['msg']}"))
                continue
            slot = kind.removeprefix("run_")
            if kind == "run_start" and not is_first:
                shard.structure.append(f"{f}:{n}: run_start is not the first line (two runs in one file?)")
            elif getattr(shard, slot) is not None:
                shard.structure.append(f"{f}:{n}: a second {kind} line")
            elif kind != "run_start" and shard.start is None:
                shard.structure.append(f"{f}:{n}: {kind} without run_start")
            elif shard.end is not None:
                shard.structure.append(f"{f}:{n}: {kind} after run_end")
            if getattr(shard, slot) is None:
                setattr(shard, slot, item)
            continue
        if shard.end is not None:
            shard.structure.append(f"{f}:{n}: record after run_end")
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
    return shard
