"""pytest plugin: the catalogue (``cases/**/*.yaml``) collected as a matrix of
(case, adapter) cells, one test item per cell.

Options (see ``pytest --help``, group "bnconform"):

* ``--framework NAME`` — run the built-in adapters of NAME (e.g. ``torch``) and
  REQUIRE it: an import failure fails every cell of it, loudly. Without any
  ``--framework``, every built-in adapter whose framework is installed runs and
  the frameworks not installed are listed in the terminal summary.
* ``--adapter package.module:Class`` — run a plug-in adapter (repeatable).
  Entry points in the group ``bnconform.adapters`` are picked up too.
* ``--require-device`` — an adapter that cannot run on this machine at all
  (``Adapter.available()``, e.g. no CUDA device) fails its cells instead of
  skipping them: for the env that exists to run the GPU rows.
* ``--results-dir DIR`` — where ``<env>.jsonl`` is written (default
  ``reports/results`` under the rootdir; env from ``$BNCONFORM_ENV``).

Only the controlling process writes records (workers ship them inside their
test reports), so ``pytest -n N`` writes the same records as ``pytest``.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The engine (numpy, pydantic models) is imported where a cell is collected or
# run, not at plugin import: under xdist the controlling process only starts
# workers and writes records, and it starts them ~0.3 s sooner this way.
if TYPE_CHECKING:
    from .adapter import Adapter
    from .catalogue import Case
    from .results import ResultRecord, ResultsWriter

ENTRY_POINT_GROUP = "bnconform.adapters"


@dataclass
class AdapterSpec:
    """An adapter selected for this run, loaded lazily in each process."""

    name: str
    target: str
    framework: str
    required: bool


def pytest_addoption(parser):
    group = parser.getgroup("bnconform", "BatchNorm conformance matrix")
    group.addoption("--framework", action="append", default=[], metavar="NAME",
                    help="run and REQUIRE the built-in adapters of this framework (repeatable, comma lists ok)")
    group.addoption("--adapter", action="append", default=[], metavar="MODULE:CLASS",
                    help="run a plug-in adapter (repeatable)")
    group.addoption("--require-device", action="store_true", default=False,
                    help="an adapter unavailable on this machine (e.g. no CUDA device) fails its cells, not skips")
    group.addoption("--results-dir", default=None, metavar="DIR",
                    help="directory for <env>.jsonl result records (default: reports/results)")


def _builtin() -> dict[str, tuple[str, str]]:
    try:
        from adapters import BUILTIN  # the repo's adapters/ package
    except ImportError:
        return {}
    return dict(BUILTIN)


def _select(config) -> tuple[list[AdapterSpec], dict[str, list[str]]]:
    """Adapters of this run, and {framework: [adapters]} not installed (not run)."""
    required = {f.strip() for opt in config.getoption("framework") for f in opt.split(",") if f.strip()}
    plugins = list(config.getoption("adapter"))
    specs: list[AdapterSpec] = []
    missing: dict[str, list[str]] = {}
    builtin = _builtin()
    unknown = required - {fw for _, fw in builtin.values()}
    if unknown:
        raise pytest.UsageError(f"--framework {', '.join(sorted(unknown))}: no built-in adapter uses it "
                                f"(known: {', '.join(sorted({fw for _, fw in builtin.values()}))})")
    if not plugins or required:
        for name, (target, fw) in builtin.items():
            if required and fw not in required:
                continue
            if fw in required or importlib.util.find_spec(fw.split(".")[0]) is not None:
                specs.append(AdapterSpec(name, target, fw, fw in required))
            else:
                missing.setdefault(fw, []).append(name)
        if not plugins:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                specs.append(AdapterSpec(ep.name, ep.value, "", True))
    for target in plugins:
        specs.append(AdapterSpec(target, target, "", True))
    return specs, missing


class _Loaded:
    """Per-process cache of instantiated adapters and their framework versions."""

    def __init__(self):
        self._cache: dict[str, tuple[Adapter, str] | BaseException] = {}

    def get(self, spec: AdapterSpec) -> tuple[Adapter, str]:
        if spec.target not in self._cache:
            from .adapter import load_adapter

            # A framework import creates hundreds of thousands of long-lived
            # objects; without this the cyclic GC rescans them again and again
            # (0.6-0.8 s per process for torch). Frozen objects are never freed,
            # which is what imported modules are anyway.
            gc.disable()
            try:
                adapter = load_adapter(spec.target)
                self._cache[spec.target] = (adapter, adapter.framework_version())
            except Exception as exc:  # noqa: BLE001 - reported per cell
                self._cache[spec.target] = exc
            finally:
                gc.freeze()
                gc.enable()
        value = self._cache[spec.target]
        if isinstance(value, BaseException):
            raise value
        return value


class Recorder:
    """Per-run state, registered as a plugin: the selected adapters, the
    per-process adapter cache, and (in the controlling process only) the
    results writer and verdict counts."""

    def __init__(self, config):
        self.config = config
        self.specs, self.missing = _select(config)
        self.loaded = _Loaded()
        self.worker = hasattr(config, "workerinput")
        self.writer: ResultsWriter | None = None
        self.counts: Counter = Counter()

    def pytest_runtest_logreport(self, report):
        if self.worker:
            return
        record = getattr(report, "bnconform_record", None)
        if record is not None:
            self._write(json.loads(record))
        elif report.failed and report.when == "???":  # pytest-xdist: the worker process died in this cell
            data = self._crash_record(report)
            if data is not None:
                self._write(data)

    def _write(self, data: dict) -> None:
        if self.writer is None:
            from .results import ResultsWriter

            self.writer = ResultsWriter(_results_path(self.config))
        self.writer.write(data)
        self.counts[data["verdict"]] += 1

    def _crash_record(self, report) -> dict | None:
        """An ``error`` record for a cell whose worker crashed (abort, segfault, hard timeout)."""
        from .adapter import load_adapter
        from .catalogue import CatalogueError, load_file
        from .engine import error_record

        match = re.fullmatch(r"(.+\.yaml)::(.+?)\[(.+)\]", report.nodeid)
        if not match:
            return None
        path, case_id, spec_name = match.groups()
        spec = next((s for s in self.specs if s.name == spec_name), None)
        try:
            case = next(c for c in load_file(Path(self.config.rootpath) / path, self.config.rootpath) if c.id == case_id)
        except (CatalogueError, StopIteration):
            return None
        name, framework, device = spec_name, spec.framework if spec else "", "cpu"
        try:
            adapter = load_adapter(spec.target)  # instantiation only; the framework is not imported
            name, framework, device = adapter.name, adapter.framework, adapter.device
        except Exception:  # noqa: BLE001
            pass
        message = f"the process running this cell crashed: {str(report.longrepr)[-1500:]}"
        return error_record(case, name, framework, "unknown", message, device, report.nodeid).model_dump(mode="json")

    def pytest_unconfigure(self, config):
        if self.writer is not None:
            self.writer.close()

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config):
        if self.worker:
            return
        tr = terminalreporter
        if self.missing:
            tr.section("bnconform: frameworks NOT installed here (their adapters did not run)", yellow=True, bold=True)
            for fw, names in sorted(self.missing.items()):
                tr.write_line(f"  {fw}: {', '.join(names)}")
        if self.counts:
            tr.section("bnconform verdicts")
            tr.write_line("  " + ", ".join(f"{v} {n}" for v, n in sorted(self.counts.items())))
            tr.write_line(f"  records: {_results_path(config)}")


def _suite_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def pytest_configure(config):
    config.addinivalue_line("markers", "bnconform_cell: a (case, adapter) conformance cell")
    _share_cores_between_workers(config)
    if "BNCONFORM_COMMIT" not in os.environ:  # inherited by xdist workers
        commit = _suite_commit(Path(config.rootpath))
        if commit:
            os.environ["BNCONFORM_COMMIT"] = commit
    config._bnconform = Recorder(config)
    config.pluginmanager.register(config._bnconform, "bnconform-recorder")


def _share_cores_between_workers(config) -> None:
    """Under ``pytest -n N`` give each xdist worker ``cpus // N`` OpenMP/MKL
    threads (unless the user set them): N workers each starting one thread per
    core oversubscribe the machine (measured: ``-n 2`` of the torch env on 2
    cores 7.7 s -> 4.9 s). Set in the controller, before the workers start,
    which inherit the environment. A serial run is left alone."""
    workers = getattr(config.option, "numprocesses", None)
    if hasattr(config, "workerinput") or not isinstance(workers, int) or workers < 2:
        return
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config):
    # Everything left is freed by the interpreter's exit: freezing it makes
    # pytest's final gc.collect() and the shutdown cheap (~0.9 s with torch).
    gc.freeze()


def _results_path(config) -> Path:
    d = config.getoption("results_dir")
    from .results import current_env

    base = Path(d) if d else Path(config.rootpath) / "reports" / "results"
    return base / f"{current_env()}.jsonl"


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".yaml" and "cases" in file_path.parent.parts:
        return CatalogueFile.from_parent(parent, path=file_path)
    return None


class CatalogueFile(pytest.File):
    """A catalogue file: one item per (case, adapter)."""

    def collect(self):
        from .catalogue import load_file

        cases = load_file(self.path, self.config.rootpath)
        specs = self.config._bnconform.specs
        for case in cases:
            for spec in specs:
                yield CellItem.from_parent(self, name=f"{case.id}[{spec.name}]", case=case, spec=spec)

    def repr_failure(self, excinfo, style=None):
        from .catalogue import CatalogueError

        if isinstance(excinfo.value, CatalogueError):
            return f"invalid catalogue: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    # Keep catalogue errors readable in the collection report too.
    def _repr_failure_py(self, excinfo, style=None):  # pragma: no cover - pytest internals
        from .catalogue import CatalogueError

        if isinstance(excinfo.value, CatalogueError):
            return f"invalid catalogue: {excinfo.value}"
        return super()._repr_failure_py(excinfo, style)


class CellFailure(Exception):
    """A cell whose verdict fails the gate."""


class CellItem(pytest.Item):
    """One (case, adapter) conformance cell."""

    def __init__(self, *, case: Case, spec: AdapterSpec, **kwargs):
        super().__init__(**kwargs)
        self.case, self.spec = case, spec
        self.add_marker("bnconform_cell")
        self.record: ResultRecord | None = None

    def runtest(self):
        try:
            adapter, version = self.config._bnconform.loaded.get(self.spec)
        except Exception as exc:  # noqa: BLE001
            if not self.spec.required:
                pytest.skip(f"adapter {self.spec.name} unavailable: {exc!r}")
            raise CellFailure(f"adapter {self.spec.name}: framework {self.spec.framework or '?'} "
                              f"failed to load: {type(exc).__name__}: {exc}") from exc
        from .engine import error_record, run_cell
        from .results import FAILING

        why_not = adapter.available()
        if why_not:
            if self.config.getoption("require_device"):
                raise CellFailure(f"adapter {adapter.name} cannot run here (--require-device): {why_not}")
            pytest.skip(f"{adapter.name}: {why_not}")
        start = time.perf_counter()
        try:
            self.record = run_cell(self.case, adapter, version, nodeid=self.nodeid)
        except pytest.fail.Exception as exc:  # pytest-timeout's signal method lands here
            self.record = error_record(self.case, adapter.name, adapter.framework, version,
                                       f"did not finish: {exc}", adapter.device, self.nodeid,
                                       time.perf_counter() - start)
            raise
        if self.record.verdict in FAILING:
            raise CellFailure(f"{self.record.verdict}: {self.record.reason}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CellFailure):
            return (f"{self.case.file}::{self.case.id} on {self.spec.name}\n"
                    f"  behaviour: {self.case.behaviour}\n  {excinfo.value}")
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"{self.case.id} on {self.spec.name}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if isinstance(item, CellItem) and call.when == "call" and getattr(item, "record", None) is not None:
        outcome.get_result().bnconform_record = item.record.model_dump_json()
