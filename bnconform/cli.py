"""Command line: ``bnconform run | report | gate | validate | cases`` (gate: see :mod:`bnconform.gate`).

``bnconform run [--framework NAME...] [--cases DIR...] [--name NAME] [--results-dir DIR] [--report FILE]
[--no-report] [PYTEST ARGS...]``
    run the built-in catalogue (plus the ``--cases`` directories) in a
    ``python -m pytest`` subprocess from the current directory, writing
    ``<results-dir>/<name>.jsonl`` (default ``reports/results/``; name
    ``$BNCONFORM_ENV`` or ``local``), then ``reports/parity.html`` from that
    shard. Arguments it does not know go to pytest (``-n 2``, ``-k EXPR``,
    ``--adapter MODULE:CLASS``). Exit status: pytest's (2 before the run when a
    ``--cases`` file is invalid, with ``file: case: field: message`` lines).

``bnconform report PATH... --out reports/parity.html [--summary S.json] [--baseline OLD...] [--explored DIR...]``
    merge result shards (files or directories of ``*.jsonl``) into one report;
    with ``--baseline`` also show (and print) every change against an older run.
    Exit 0 when written (bad lines, conflicts, incomplete or partial runs and
    shards without a run manifest are shown in the report and on stderr), 2
    when no record could be read at all.
``bnconform gate CURRENT... [--baseline OLD...] [--require-frameworks F,G] [--cases DIR]
[--allow-partial] [--allow-legacy-shards] [--map-adapter OLD NEW] [--json FILE]``
    exit 0 only on complete, current, measured evidence with no failing cell,
    behaviour change or magnitude drift (:mod:`bnconform.gate`).
``bnconform validate [PATH...]``
    validate catalogue files (without PATH the built-in catalogue and its
    ``expectations/*.yaml``); exit 1 with ``file: case: field: message``
    (``file: entry: field: message``) lines.
``bnconform cases [PATH...]``
    list case ids with their theme and one-line behaviour (without PATH the
    built-in catalogue).
``bnconform explore --framework GROUP | --adapter MODULE:CLASS [--seed S] [--max-examples N] [--time-budget SEC]``
    generated cases; undocumented divergences shrunk to minimal catalogue cases (:mod:`bnconform.explore`).

The ``--help`` texts are plain text: the reST above is for the API docs.
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
from pathlib import Path

from .builtin import location
from .catalogue import load_catalogue
from .explore import add_parser as add_explore_parser
from .gate import add_parser as add_gate_parser
from .history import add_parser as add_history_parser
from .sweep import add_parser as add_sweep_parser
from .report import load_explored, run_notices, write_report


def _report(args) -> int:
    # No cyclic garbage collection while the report is built: merging and building the page allocate
    # millions of small acyclic objects (parsed records, page data) that each full collection walks again
    # (a quarter of the CPU time of a full-matrix report); reference counting frees them all the same.
    # Afterwards what is still alive is frozen (never walked again) rather than collected once more.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _write_report(args)
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


def _write_report(args) -> int:
    explored = load_explored(args.explored) if args.explored else None
    for problem in explored.problems if explored else []:
        print(f"bnconform report: explored: {problem}", file=sys.stderr)
    try:
        merged, base_diff = write_report(args.paths, args.out, args.summary, baseline=args.baseline,
                                         plots=not args.no_plots, explored=explored)
    except FileNotFoundError as exc:
        print(f"bnconform report: {exc}", file=sys.stderr)
        return 2
    for bad in merged.bad_lines:
        print(f"bnconform report: skipped {bad}", file=sys.stderr)
    for notice in run_notices(merged):
        print(f"bnconform report: WARNING {notice}", file=sys.stderr)
    for a, b in merged.conflicts:
        print(f"bnconform report: CONFLICT {a.case_id} on {a.adapter}: {a.verdict} ({a.env}, {a.platform}) "
              f"vs {b.verdict} ({b.env}, {b.platform})",
              file=sys.stderr)
    counts = ", ".join(f"{v} {n}" for v, n in sorted(merged.counts().items()))
    if base_diff is not None:
        print("bnconform report: against the baseline:")
        print("\n".join("  " + line for line in base_diff.text().splitlines()))
    print(f"bnconform report: {len(merged.cells)} cells ({counts}) -> {args.out}")
    return 0 if merged.cells else 2


def _catalogue(paths: list[str]):
    """The catalogue files at ``paths``, or the built-in catalogue (names shown
    as ``cases/<file>.yaml``)."""
    if paths:
        return load_catalogue(paths)
    where = location().check()
    return load_catalogue([where.cases], where.root)


def _validate(args) -> int:
    from .expect import validate_all

    cat = _catalogue(args.paths)
    for err in cat.errors:
        print(err, file=sys.stderr)
    print(f"{len(cat.cases)} valid case(s), {len(cat.errors)} error(s)")
    if args.paths:
        return 1 if cat.errors else 0
    entries, errors = validate_all()  # and the expectations files of the built-in rows
    for err in errors:
        print(err, file=sys.stderr)
    print(f"{entries} valid expectation entr{'y' if entries == 1 else 'ies'}, {len(errors)} error(s)")
    return 1 if cat.errors or errors else 0


def _cases(args) -> int:
    cat = _catalogue(args.paths)
    for c in cat.cases:
        print(f"{c.theme:12} {c.id:40} {c.behaviour}")
    for err in cat.errors:
        print(err, file=sys.stderr)
    return 1 if cat.errors else 0


def _run(args, pytest_args: list[str]) -> int:
    where = location().check()
    extra = [Path(d) for d in args.cases]
    for d in extra:
        if not d.is_dir():
            print(f"bnconform run: --cases {d}: not a directory", file=sys.stderr)
            return 2
    if extra:  # before the run starts (and truncates the previous shard): the errors name file, case and field
        cat = load_catalogue([where.cases, *extra])
        for err in cat.errors:
            print(err, file=sys.stderr)
        if cat.errors:
            print(f"bnconform run: {len(cat.errors)} invalid catalogue file(s): nothing was run", file=sys.stderr)
            return 2
    results_dir = Path(args.results_dir).resolve()
    shard = results_dir / f"{args.name}.jsonl"
    # The bnconform.plugin entry point loads the plugin anyway; -p also works with PYTEST_DISABLE_PLUGIN_AUTOLOAD
    # (an entry point registered under that same name is not registered twice). A subprocess: the current
    # directory is importable for --adapter as with plain pytest, and the framework lives in its own process.
    cmd = [sys.executable, "-m", "pytest", "-p", "bnconform.plugin", str(where.cases), "--rootdir", os.getcwd(),
           "--results-dir", str(results_dir)]
    for fw in args.framework:
        cmd += ["--framework", fw]
    for d in extra:
        cmd += ["--cases", str(d.resolve())]
    cmd += pytest_args
    print("bnconform run: " + subprocess.list2cmdline(cmd), flush=True)
    proc = subprocess.Popen(cmd, env={**os.environ, "BNCONFORM_ENV": args.name})
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:  # pytest got the SIGINT too: it ends the run and writes its run_end
            continue
    if args.no_report:
        return code
    if not shard.is_file():
        print(f"bnconform run: pytest wrote no records ({shard} absent): no report", file=sys.stderr)
        return code
    try:
        merged, _ = write_report([str(shard)], args.report, None)
    except Exception as exc:  # noqa: BLE001 - the records are written; say where they are
        print(f"bnconform run: the report could not be written ({type(exc).__name__}: {exc}); the records are "
              f"in {shard}", file=sys.stderr)
        return code or 1
    counts = ", ".join(f"{v} {n}" for v, n in sorted(merged.counts().items()))
    print(f"bnconform run: {len(merged.cells)} cells ({counts}) in {shard} -> {args.report}")
    return code


DESCRIPTION = ("BatchNorm conformance suite: run the catalogue, merge result shards into the HTML report, gate a "
               "run, validate and list the catalogue.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnconform", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "run", allow_abbrev=False, help="run the built-in catalogue with pytest and write the shard and the report",
        description="Run the built-in catalogue (and the --cases directories) for the frameworks installed here, "
                    "in a subprocess (python -m pytest) from the current directory; write the shard "
                    "RESULTS_DIR/NAME.jsonl and the HTML report of it. Every argument not listed below goes to "
                    "pytest unchanged (-n 2, -k EXPR, --adapter MODULE:CLASS, -x, ...). Exit status: pytest's.",
        epilog="example: bnconform run --framework torch -n 2 --name torch-2.13")
    p.add_argument("--framework", action="append", default=[], metavar="NAME",
                   help="run and require the built-in adapters of this framework group (repeatable; e.g. torch, "
                        "torch.compile, flax; an unknown name is refused with the list of known ones)")
    p.add_argument("--cases", action="append", default=[], metavar="DIR",
                   help="add your own catalogue files (*.yaml under DIR, same schema) to the built-in ones "
                        "(repeatable); an invalid file stops the run before it starts, naming file, case and field")
    p.add_argument("--name", default=os.environ.get("BNCONFORM_ENV") or "local",
                   help="the shard's name and the records' env (default: $BNCONFORM_ENV, else %(default)s)")
    p.add_argument("--results-dir", default="reports/results", metavar="DIR",
                   help="directory of the shard NAME.jsonl (default: %(default)s)")
    p.add_argument("--report", default="reports/parity.html", metavar="FILE",
                   help="HTML report of this run's shard (default: %(default)s)")
    p.add_argument("--no-report", action="store_true", help="write the shard only")
    p.set_defaults(func=_run)
    p = sub.add_parser("report", help="merge result shards into the HTML parity report")
    p.add_argument("paths", nargs="+", help="results files or directories of *.jsonl")
    p.add_argument("--out", default="reports/parity.html", help="HTML output (default: %(default)s)")
    p.add_argument("--summary", default=None, help="also write a machine-readable summary JSON here")
    p.add_argument("--baseline", nargs="+", action="extend", default=None, metavar="OLD",
                   help="older results files/directories: show every cell whose verdict or divergence set changed, "
                        "and new/removed cases and adapters")
    p.add_argument("--no-plots", action="store_true",
                   help="no plots in the drill-down: leaves the plotted running statistics and the inlined "
                        "plotting library out of the page (smaller)")
    p.add_argument("--explored", action="append", default=None, metavar="DIR",
                   help="a directory of bnconform explore summaries (explore-*.json), or one such file, for the "
                        "report's Explored view (repeatable); a DIR that does not exist or holds none is noted "
                        "there, not an error")
    p.set_defaults(func=_report)
    p = sub.add_parser("validate", help="validate catalogue files")
    p.add_argument("paths", nargs="*", help="files or directories (default: the built-in catalogue and expectations)")
    p.set_defaults(func=_validate)
    p = sub.add_parser("cases", help="list the catalogue")
    p.add_argument("paths", nargs="*", help="files or directories (default: the built-in catalogue)")
    p.set_defaults(func=_cases)
    add_gate_parser(sub)
    add_explore_parser(sub)
    add_sweep_parser(sub)  # issue 17: bnconform sweep / history (bnconform/sweep.py, history.py)
    add_history_parser(sub)
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        return args.func(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
