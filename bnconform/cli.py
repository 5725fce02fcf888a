"""Command line: ``bnconform report | gate | validate | cases`` (gate: see :mod:`bnconform.gate`).

``bnconform report PATH... --out reports/parity.html [--summary S.json] [--baseline OLD...]``
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
    validate catalogue files (without PATH also ``expectations/*.yaml``); exit 1
    with ``file: case: field: message`` (``file: entry: field: message``) lines.
``bnconform cases [PATH...]``
    list case ids with their theme and one-line behaviour.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from .catalogue import load_catalogue
from .gate import add_parser as add_gate_parser
from .history import add_parser as add_history_parser
from .sweep import add_parser as add_sweep_parser
from .report import run_notices, write_report


def _report(args) -> int:
    try:
        merged, base_diff = write_report(args.paths, args.out, args.summary, baseline=args.baseline,
                                         plots=not args.no_plots, figure_cache=args.figure_cache)
    except FileNotFoundError as exc:
        print(f"bnconform report: {exc}", file=sys.stderr)
        return 2
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        print("bnconform report: matplotlib is not installed: the report has no plots", file=sys.stderr)
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


def _validate(args) -> int:
    from .expect import validate_all

    cat = load_catalogue(args.paths or None)
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
    cat = load_catalogue(args.paths or None)
    for c in cat.cases:
        print(f"{c.theme:12} {c.id:40} {c.behaviour}")
    for err in cat.errors:
        print(err, file=sys.stderr)
    return 1 if cat.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnconform", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="merge result shards into the HTML parity report")
    p.add_argument("paths", nargs="+", help="results files or directories of *.jsonl")
    p.add_argument("--out", default="reports/parity.html", help="HTML output (default: %(default)s)")
    p.add_argument("--summary", default=None, help="also write a machine-readable summary JSON here")
    p.add_argument("--baseline", nargs="+", action="extend", default=None, metavar="OLD",
                   help="older results files/directories: show every cell whose verdict or divergence set changed, "
                        "and new/removed cases and adapters")
    p.add_argument("--no-plots", action="store_true", help="skip the matplotlib figures (faster)")
    p.add_argument("--figure-cache", default=None, metavar="DIR",
                   help="where rendered figures are cached (default: ~/.cache/bnconform/figures)")
    p.set_defaults(func=_report)
    p = sub.add_parser("validate", help="validate catalogue files")
    p.add_argument("paths", nargs="*", help="files or directories (default: cases/)")
    p.set_defaults(func=_validate)
    p = sub.add_parser("cases", help="list the catalogue")
    p.add_argument("paths", nargs="*", help="files or directories (default: cases/)")
    p.set_defaults(func=_cases)
    add_gate_parser(sub)
    add_sweep_parser(sub)  # issue 17: bnconform sweep / history (bnconform/sweep.py, history.py)
    add_history_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
