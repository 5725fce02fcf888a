"""pytest plugin: the catalogue (``cases/**/*.yaml``) collected as a matrix of
(case, adapter) cells, one test item per cell.

Installed, the plugin is registered by the ``pytest11`` entry point
``bnconform.plugin`` (so ``pytest --framework torch`` works in any directory);
the checkout's ``conftest.py`` names the same module, which pytest then does not
register again.

Catalogue files are the ``*.yaml`` under: the rootdir's ``cases/`` (a project
laid out like this repository; the checkout's is the built-in catalogue), the
built-in catalogue (:mod:`bnconform.builtin`) and every ``--cases`` directory.
A catalogue run given no paths (``pytest --framework torch`` outside a checkout)
collects the built-in catalogue, plus the ``--cases`` directories.

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
* ``--cases DIR`` — add the catalogue files under DIR to the run (repeatable;
  same schema and validation as the built-in ones).

Only the controlling process writes records (workers ship them inside their
test reports), so ``pytest -n N`` writes the same records as ``pytest``.

A catalogue run (a path in a catalogue directory, or ``--framework``/``--adapter``/``--cases``;
not ``pytest tests``, not ``--collect-only``) truncates its shard when the
session starts and frames the records with a run manifest — ``run_start``,
``collected``, ``run_end`` (see :mod:`bnconform.results`) — so a reader can
tell a complete run from an interrupted, partial or crashed one. Every
collected cell gets exactly one record: an adapter that is unavailable here
(``unsupported``, or ``error`` with ``--require-device``), fails to load,
returns garbage, raises, hangs (``timed out``) or crashes its worker still
has one. Case ids must be unique across the catalogue files collected (a
duplicate is a collection error). Per-run state lives in ``config.stash``
and ``item.stash``.
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
#: Per-run state (``config.stash``) and the record of a cell (``item.stash``).
RECORDER = pytest.StashKey["Recorder"]()
RECORD = pytest.StashKey["ResultRecord"]()
#: Case ids collected so far in this process -> their file (duplicates across files are collection errors).
SEEN_CASES = pytest.StashKey[dict]()


@dataclass
class AdapterSpec:
    """An adapter selected for this run, loaded lazily in each process."""

    name: str
    target: str
    framework: str
    required: bool
    #: Given with ``--adapter`` (rerunning its cells needs the option again).
    plugin: bool = False


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
    group.addoption("--cases", action="append", default=[], metavar="DIR", dest="bnconform_cases",
                    help="add the catalogue files (*.yaml) under DIR to the run (repeatable)")


def _builtin() -> dict[str, tuple[str, str]]:
    from .adapter import builtin_registry

    return builtin_registry()


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
        specs.append(AdapterSpec(target, target, "", True, plugin=True))
    return specs, missing


class _Loaded:
    """Per-process cache of instantiated adapters with their framework version and build."""

    def __init__(self):
        self._cache: dict[str, tuple[Adapter, str, str | None] | BaseException] = {}

    def get(self, spec: AdapterSpec) -> tuple[Adapter, str, str | None]:
        if spec.target not in self._cache:
            from .adapter import load_adapter

            # A framework import creates hundreds of thousands of long-lived
            # objects; without this the cyclic GC rescans them again and again
            # (0.6-0.8 s per process for torch). Frozen objects are never freed,
            # which is what imported modules are anyway.
            gc.disable()
            try:
                adapter = load_adapter(spec.target)
                version = adapter.framework_version()
                try:
                    build = adapter.framework_build()
                except Exception as exc:  # noqa: BLE001 - a detail, never a reason to lose the cell
                    build = f"framework_build() raised {exc!r}"
                self._cache[spec.target] = (adapter, version, build)
            except Exception as exc:  # noqa: BLE001 - reported per cell
                self._cache[spec.target] = exc
            finally:
                gc.freeze()
                gc.enable()
        value = self._cache[spec.target]
        if isinstance(value, BaseException):
            raise value
        return value


#: A cell node id: ``cases/<file>.yaml::<case id>[<adapter>]``.
CELL_NODEID = re.compile(r"(.+\.ya?ml)::(.+?)\[(.+)\]")


class Recorder:
    """Per-run state (kept in ``config.stash[RECORDER]``, registered as a plugin):
    the selected adapters, the per-process adapter cache, and in the
    controlling process of a catalogue run the shard writer and its manifest.

    The shard is truncated and its ``run_start`` line written when the session
    starts; ``collected`` follows collection; records are written as cells
    finish; ``run_end`` says how the session ended (see :mod:`bnconform.results`).
    """

    def __init__(self, config):
        self.config = config
        self.specs, self.missing = _select(config)
        self.loaded = _Loaded()
        self.worker = hasattr(config, "workerinput")
        self.writer: ResultsWriter | None = None
        self.counts: Counter = Counter()
        self.written: set[str] = set()
        self.versions: dict[str, str] = {}
        self.started_at: dict[str, float] = {}
        self.collection_errors: dict[str, str] = {}
        self.collected = None
        #: The run's catalogue by case id (controlling process, once collected): crash records need the case.
        self.catalogue: dict[str, Case] = {}
        #: Records of quirk/known_bug cells (row-level reproduction check at the end of a complete run).
        self.judged: list[dict] = []
        self.unreproduced: list[str] = []
        self.ended: str | None = None
        self.timeout = _timeout(config)
        self.timeout_method = _timeout_method(config)

    # ---------------------------------------------------------------- manifest

    def pytest_sessionstart(self, session):
        if self.worker or self.config.option.collectonly or not _catalogue_run(self.config):
            return
        from .results import (ResultsWriter, RunStart, catalogue_digest, catalogue_dirs, catalogue_files,
                              current_env, now)

        root = Path(self.config.rootpath)
        dirs = list(dict.fromkeys(d for cases in _run_catalogue(self.config) for d in catalogue_dirs(cases)))
        opt = self.config.option
        selection = {
            "args": [str(a) for a in self.config.invocation_params.args],
            "paths": [str(a) for a in self.config.args],
            "keyword": getattr(opt, "keyword", "") or "",
            "markexpr": getattr(opt, "markexpr", "") or "",
            "deselect": list(getattr(opt, "deselect", None) or []),
            "frameworks": sorted({s.framework for s in self.specs if s.required and s.framework}),
            "adapters": list(self.config.getoption("adapter")),
            "cases": list(self.config.getoption("bnconform_cases")),
            "adapter_names": [s.name for s in self.specs],
            "require_device": bool(self.config.getoption("require_device")),
            "timeout": self.timeout,
            "timeout_method": self.timeout_method,
            "workers": getattr(opt, "numprocesses", None),
        }
        groups = sorted({s.framework for s in self.specs if s.framework})
        self.writer = ResultsWriter(_results_path(self.config))
        self.writer.write(RunStart(env=current_env(), started=now(), suite_commit=os.environ.get("BNCONFORM_COMMIT"),
                                   catalogue_digest=catalogue_digest(dirs),
                                   catalogue_files=catalogue_files(dirs, groups), groups=groups,
                                   catalogue_dirs=[d.relative_to(root).as_posix() if d.is_relative_to(root)
                                                   else d.as_posix() for d in dirs],
                                   selection=selection))

    def pytest_collection_finish(self, session):
        self._collected([item.nodeid for item in session.items if isinstance(item, CellItem)])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids):
        self._collected([i for i in ids if CELL_NODEID.fullmatch(i)])

    def _collected(self, cells: list[str]) -> None:
        if self.writer is None or self.collected is not None:
            return
        from .catalogue import load_catalogue
        from .results import Collected

        dirs = _run_catalogue(self.config)
        cat = load_catalogue(dirs, self.config.rootpath) if dirs else None
        if cat is not None:  # the names the collected cells carry (cases/training.yaml, not a site-packages path)
            cat.cases = [c.model_copy(update={"file": _shown(self.config, Path(c.file))}) for c in cat.cases]
            cat.errors = [type(e)(_shown(self.config, Path(e.file)), e.message, e.item_id, e.field) for e in cat.errors]
            self.catalogue = cat.by_id()
        full = [(c.id, s.name, f"{c.file}::{c.id}[{s.name}]") for c in (cat.cases if cat else []) for s in self.specs]
        # Cells are compared by (case id, adapter): node ids of files outside the rootdir are pytest's to choose.
        chosen = {m.group(2, 3) for m in map(CELL_NODEID.fullmatch, cells) if m}
        not_selected = [n for case_id, adapter, n in full if (case_id, adapter) not in chosen]
        partial = bool(not_selected) or not full
        self.collected = Collected(cells=cells, full=len(full), partial=partial, not_selected=not_selected[:50],
                                   not_selected_count=len(not_selected),
                                   catalogue_errors=[str(e) for e in (cat.errors if cat else [])])
        self.writer.write(self.collected)

    def pytest_collectreport(self, report):
        if not self.worker and report.failed:
            self.collection_errors.setdefault(report.nodeid or "?", str(report.longrepr).splitlines()[-1][:500]
                                              if report.longrepr else "collection failed")

    def pytest_runtest_logstart(self, nodeid, location):
        self.started_at[nodeid] = time.monotonic()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        if self.writer is None:
            return
        from .results import RunEnd, now

        detail = None
        if self.collection_errors:
            how = "collection_error"
            detail = "; ".join(f"{k}: {v}" for k, v in list(self.collection_errors.items())[:5])
        elif exitstatus == pytest.ExitCode.INTERRUPTED or session.shouldstop or session.shouldfail:
            how = "interrupted"
            detail = str(session.shouldstop or session.shouldfail or "interrupted (KeyboardInterrupt / SIGINT)")
        elif exitstatus == pytest.ExitCode.INTERNAL_ERROR:
            how = "crashed"
            detail = "pytest internal error"
        else:
            how = "complete"
        if how == "complete" and self.collected is not None and not self.collected.partial:
            # Row-level strictness (resultset.unreproduced_divergences): a documented divergence modelled
            # by oracle options must still reproduce somewhere on its row; only a complete run can tell.
            from .results import ResultRecord
            from .resultset import unreproduced_divergences

            self.unreproduced = unreproduced_divergences(ResultRecord.model_validate(d) for d in self.judged)
            if self.unreproduced:
                session.exitstatus = exitstatus = pytest.ExitCode.TESTS_FAILED
        self.writer.write(RunEnd(how=how, detail=detail, exitstatus=int(exitstatus), ended=now(),
                                 records=len(self.written),
                                 collection_errors=[f"{k}: {v}" for k, v in self.collection_errors.items()],
                                 framework_versions=self.versions))
        self.writer.close()
        self.writer = None
        self.ended = how

    # ---------------------------------------------------------------- records

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
        if self.writer is None:  # not a catalogue run, or --collect-only: nothing is written
            return
        if data.get("nodeid") in self.written:  # exactly one record per cell
            return
        self.writer.write(data)
        self.written.add(data.get("nodeid"))
        self.counts[data["verdict"]] += 1
        if data["verdict"] in ("quirk", "known_bug"):
            self.judged.append(data)
        build = data.get("framework_build")
        self.versions[data["adapter"]] = data["framework_version"] + (f" ({build})" if build else "")

    def _crash_record(self, report) -> dict | None:
        """An ``error`` record for a cell whose worker died: stopped by the timeout
        (thread method: the cell ran at least ``--timeout`` seconds) or crashed
        (abort, segfault)."""
        from .adapter import load_adapter
        from .catalogue import CatalogueError, load_file
        from .engine import error_record
        from .results import ResultRecord, current_env

        match = CELL_NODEID.fullmatch(report.nodeid)
        if not match:
            return None
        path, case_id, spec_name = match.groups()
        spec = next((s for s in self.specs if s.name == spec_name), None)
        elapsed = time.monotonic() - self.started_at.get(report.nodeid, time.monotonic())
        if self.timeout and elapsed >= self.timeout and self.timeout_method != "signal":
            message = (f"timed out: the cell ran {elapsed:.0f} s, over --timeout {self.timeout:g} s; pytest-timeout "
                       f"(thread method) stopped the process running it")
        else:
            message = f"the process running this cell crashed: {str(report.longrepr)[-1500:]}"
        name, framework, device = spec_name, spec.framework if spec else "", "cpu"
        try:
            adapter = load_adapter(spec.target)  # instantiation only; the framework is not imported
            name, framework, device = adapter.name, adapter.framework, adapter.device
        except Exception:  # noqa: BLE001
            pass
        plugin = spec.target if spec is not None and spec.plugin else None
        try:
            case = self.catalogue.get(case_id) or next(
                c for c in load_file(Path(self.config.rootpath) / path, self.config.rootpath) if c.id == case_id)
        except (CatalogueError, StopIteration):
            # The case file changed under the run: still one record for the cell.
            return ResultRecord(case_id=case_id, case_file=path, theme="?", title="?", behaviour="?", adapter=name,
                                framework=framework, framework_version="unknown", device=device, verdict="error",
                                reason=message, env=current_env(), nodeid=report.nodeid,
                                plugin_adapter=plugin).model_dump(mode="json")
        rec = error_record(case, name, framework, "unknown", message, device, report.nodeid, elapsed)
        return rec.model_copy(update={"plugin_adapter": plugin}).model_dump(mode="json")

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
        if self.counts or self.collected is not None:
            tr.section("bnconform verdicts")
            tr.write_line("  " + ", ".join(f"{v} {n}" for v, n in sorted(self.counts.items())))
            tr.write_line(f"  records: {_results_path(config)}")
            if self.collected is not None and self.collected.partial:
                tr.write_line(f"  PARTIAL run: {len(self.collected.cells)} of {self.collected.full} cells of the "
                              f"selected adapters were selected; `bnconform gate` refuses this shard unless "
                              f"--allow-partial", yellow=True)
            for line in self.unreproduced:
                tr.write_line(f"  BEHAVIOUR CHANGED: {line}", red=True)
            if self.ended and self.ended != "complete":
                tr.write_line(f"  run ended {self.ended}: `bnconform gate` refuses this shard", red=True)


def _timeout(config) -> float | None:
    """pytest-timeout's per-test timeout of this run (None where none is set)."""
    value = getattr(config.option, "timeout", None)
    if value is None:
        try:
            value = config.getini("timeout")
        except (ValueError, KeyError):
            value = None
    try:
        return float(value) if value not in (None, "") and float(value) > 0 else None
    except (TypeError, ValueError):
        return None


def _timeout_method(config) -> str | None:
    """pytest-timeout's method of this run ("signal" or "thread"; None when unknown)."""
    value = getattr(config.option, "timeout_method", None)
    if not value:
        try:
            value = config.getini("timeout_method")
        except (ValueError, KeyError):
            value = None
    return value or None


def _catalogue_options(config) -> bool:
    """``--framework``, ``--adapter`` or ``--cases`` given."""
    return bool(config.getoption("framework") or config.getoption("adapter") or config.getoption("bnconform_cases"))


def _catalogue_run(config) -> bool:
    """Whether this session runs the conformance matrix (then it writes a shard):
    ``--framework``/``--adapter``/``--cases`` given, or a path in (or containing)
    a catalogue directory. ``pytest tests`` (the suite's own tests) writes nothing."""
    return _catalogue_options(config) or bool(_run_catalogue(config))


def _extra_cases(config) -> list[Path]:
    """The ``--cases`` directories (resolved against the invocation directory)."""
    base = Path(config.invocation_params.dir)
    return [(base / d).resolve() for d in config.getoption("bnconform_cases")]


def _catalogue_dirs(config) -> list[Path]:
    """Every directory whose ``*.yaml`` are catalogue files in this session
    (resolved, without duplicates): the rootdir's ``cases/``, the built-in
    catalogue, the ``--cases`` directories."""
    from .builtin import location

    dirs = [Path(config.rootpath) / "cases", location().cases, *_extra_cases(config)]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def _arg_paths(config) -> list[Path]:
    base = Path(config.invocation_params.dir)
    paths = [Path(str(arg).split("::")[0]) for arg in config.args]
    return [(p if p.is_absolute() else base / p).resolve() for p in paths]


def _run_catalogue(config) -> list[Path]:
    """The catalogue directories this session collects from: those an argument
    lies in or contains, and the ``--cases`` directories (which always count)."""
    args = _arg_paths(config)
    extra = _extra_cases(config)
    return [d for d in _catalogue_dirs(config) if d in extra or d.is_dir() and any(
        a.is_relative_to(d) or d.is_relative_to(a) for a in args)]


def _default_paths(config) -> None:
    """Point a catalogue run at its catalogue. Given no paths and no catalogue
    of its own (no ``cases/`` in the rootdir: not the checkout, not a project laid
    out like it), ``pytest --framework NAME`` collects the built-in catalogue
    instead of the current directory's tests. ``--cases`` directories are added
    to the paths in any case. Deterministic from the command line, so xdist
    workers (which get the invocation's arguments) collect the same."""
    from .builtin import BuiltinMissing, location

    if not _catalogue_options(config):
        return
    args = list(config.args)
    if config.args_source != pytest.Config.ArgsSource.ARGS and not (Path(config.rootpath) / "cases").is_dir():
        try:
            where = location().check()
        except BuiltinMissing as exc:
            raise pytest.UsageError(str(exc)) from None
        if not where.installed and not config.getoption("noconftest") and Path(config.rootpath).resolve() != where.root:
            # pytest would import the checkout's conftest.py (pytest_plugins) during collection, which it refuses.
            raise pytest.UsageError(f"this bnconform is the checkout {where.root}: run pytest there, pass "
                                    f"{where.cases} as a path, or use `bnconform run` (any directory)")
        args = [str(where.cases)]
    covered = _arg_paths(config) if args == config.args else [Path(a) for a in args]
    for d in _extra_cases(config):
        if not d.is_dir():
            raise pytest.UsageError(f"--cases {d}: not a directory")
        if not any(d.is_relative_to(a) for a in covered):
            args.append(str(d))
    config.args = args


def _shown(config, path: Path) -> str:
    """How a catalogue file is named in records and errors: relative to the
    rootdir when it lies there (``cases/training.yaml``), else relative to the
    parent of its catalogue directory (the built-in one installed:
    ``cases/training.yaml``; ``--cases /x/mine``: ``mine/a.yaml``)."""
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    root = Path(config.rootpath)
    if path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    resolved = path.resolve()
    for d in _catalogue_dirs(config):
        if resolved.is_relative_to(d):
            return resolved.relative_to(d.parent).as_posix()
    return path.as_posix()


def _suite_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def pytest_configure(config):
    config.addinivalue_line("markers", "bnconform_cell: a (case, adapter) conformance cell")
    _default_paths(config)
    config.addinivalue_line("markers", "large: a cell of a case reducing over >= 2^16 values per channel "
                                       "(bnconform.catalogue.LARGE_REDUCTION_SIZE); -m 'not large' deselects them")
    _share_cores_between_workers(config)
    if "BNCONFORM_COMMIT" not in os.environ:  # inherited by xdist workers
        from .builtin import location

        # Installed, the suite is no checkout (and the rootdir is the user's repository): its version says it.
        commit = (f"bnconform=={importlib.metadata.version('bnconform')}" if location().installed
                  else _suite_commit(Path(config.rootpath)))
        if commit:
            os.environ["BNCONFORM_COMMIT"] = commit
    config.stash[RECORDER] = Recorder(config)
    config.pluginmanager.register(config.stash[RECORDER], "bnconform-recorder")


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
    if file_path.suffix == ".yaml":
        resolved = file_path.resolve()
        if any(resolved.is_relative_to(d) for d in _catalogue_dirs(parent.config)):
            return CatalogueFile.from_parent(parent, path=file_path)
    return None


class CatalogueFile(pytest.File):
    """A catalogue file: one item per (case, adapter)."""

    def collect(self):
        from .catalogue import CatalogueError, load_file

        shown = _shown(self.config, self.path)
        cases = [c.model_copy(update={"file": shown}) for c in load_file(self.path, self.config.rootpath)]
        seen = self.config.stash.setdefault(SEEN_CASES, {})
        for case in cases:  # the report and the gate key cells by case id: it must be unique
            first = seen.setdefault(case.id, case.file)
            if first != case.file:
                raise CatalogueError(case.file, f"duplicate case id (first in {first})", case.id, "id")
        specs = self.config.stash[RECORDER].specs
        for case in cases:
            for spec in specs:
                yield CellItem.from_parent(self, name=f"{case.id}[{spec.name}]", case=case, spec=spec)

    def repr_failure(self, excinfo, style=None):
        from .catalogue import CatalogueError

        if isinstance(excinfo.value, CatalogueError):
            return f"invalid catalogue: {excinfo.value}"
        return super().repr_failure(excinfo, style)


class CellFailure(Exception):
    """A cell whose verdict fails the gate."""


class CellItem(pytest.Item):
    """One (case, adapter) conformance cell. Whatever the adapter does, the
    cell gets exactly one record (``item.stash[RECORD]``), shipped to the
    controlling process in its test report."""

    def __init__(self, *, case: Case, spec: AdapterSpec, **kwargs):
        super().__init__(**kwargs)
        self.case, self.spec = case, spec
        self.add_marker("bnconform_cell")
        if case.large:
            self.add_marker("large")

    @property
    def record(self) -> ResultRecord | None:
        return self.stash.get(RECORD, None)

    def _keep(self, record: ResultRecord) -> ResultRecord:
        if self.spec.plugin:
            record = record.model_copy(update={"plugin_adapter": self.spec.target})
        self.stash[RECORD] = record
        return record

    def _plain(self, verdict: str, reason: str, adapter: Adapter | None = None, version: str = "unknown",
               build: str | None = None) -> ResultRecord:
        from .engine import case_fields
        from .results import ResultRecord, current_env

        return self._keep(ResultRecord(
            **case_fields(self.case), adapter=adapter.name if adapter else self.spec.name,
            framework=adapter.framework if adapter else (self.spec.framework or "?"), framework_version=version,
            framework_build=build, device=adapter.device if adapter else "?", env=current_env(),
            nodeid=self.nodeid, verdict=verdict, reason=reason))

    def runtest(self):
        try:
            adapter, version, build = self.config.stash[RECORDER].loaded.get(self.spec)
        except Exception as exc:  # noqa: BLE001
            what = f"framework {self.spec.framework or '?'} failed to load: {type(exc).__name__}: {exc}"
            if not self.spec.required:
                self._plain("unsupported", f"adapter {self.spec.name} unavailable here: {what} "
                                           f"(not required: no --framework {self.spec.framework})")
                pytest.skip(f"adapter {self.spec.name} unavailable: {exc!r}")
            self._plain("error", f"adapter {self.spec.name}: {what}")
            raise CellFailure(f"adapter {self.spec.name}: {what}") from exc
        from .engine import _error_text, error_record, run_cell
        from .results import FAILING

        why_not = adapter.available()
        if why_not:
            if self.config.getoption("require_device"):
                self._plain("error", f"cannot run on this machine (--require-device): {why_not}", adapter, version,
                            build)
                raise CellFailure(f"adapter {adapter.name} cannot run here (--require-device): {why_not}")
            self._plain("unsupported", f"not available on this machine: {why_not}", adapter, version, build)
            pytest.skip(f"{adapter.name}: {why_not}")
        start = time.perf_counter()
        try:
            record = run_cell(self.case, adapter, version, nodeid=self.nodeid, framework_build=build)
        except pytest.fail.Exception as exc:  # pytest-timeout's signal method lands here
            self._keep(error_record(self.case, adapter.name, adapter.framework, version, f"timed out: {exc}",
                                    adapter.device, self.nodeid, time.perf_counter() - start, build))
            raise
        except Exception as exc:  # noqa: BLE001 - a bnconform or adapter-contract failure: still a record
            self._keep(error_record(self.case, adapter.name, adapter.framework, version,
                                    f"bnconform could not judge this cell: {_error_text(exc)}", adapter.device,
                                    self.nodeid, time.perf_counter() - start, build))
            raise CellFailure(f"error: bnconform could not judge this cell: {type(exc).__name__}: {exc}") from exc
        record = self._keep(record)
        if record.verdict in FAILING:
            raise CellFailure(f"{record.verdict}: {record.reason}")
        if record.verdict == "unsupported":
            # pytest's outcome follows the verdict: a cell that measured nothing is not "passed" (terminal, -ra
            # summary and JUnit show the reason); its record is written all the same.
            pytest.skip(f"unsupported: {record.reason}")

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
    if not isinstance(item, CellItem) or call.when != "call":
        return
    if item.record is None and call.excinfo is not None and not call.excinfo.errisinstance(KeyboardInterrupt):
        from .engine import error_record

        # Anything the cell raised past runtest's handlers (SystemExit from an adapter, ...).
        item._keep(error_record(item.case, item.spec.name, item.spec.framework or "?", "unknown",
                                f"the cell raised {call.excinfo.typename}: {call.excinfo.value}", "?", item.nodeid))
    if item.record is not None:
        outcome.get_result().bnconform_record = item.record.model_dump_json()
