"""Harness overhead and scaling of the conformance matrix (run: ``tox -e bench``).

For one framework env (default ``torch``) it measures, each the best of
``--repeat`` runs:

* ``import_s``   — ``import <framework>`` in a fresh interpreter;
* ``floor_s``    — a bare script in one process: import the framework and run
  every supported cell's BN calls (``adapter.run``) once, no oracle, no
  comparison, no pytest;
* ``matrix_s``   — ``pytest cases --framework F`` (the real matrix), serial;
* ``matrix_n1_s``— the same with ``-n 1``: one xdist worker, the cheapest
  way to keep crash isolation (a crashing cell is an ``error`` record and the
  matrix goes on);
* ``matrix_n2_s``— the same with ``-n 2`` (pytest-xdist);
* ``scale``      — matrix time for the catalogue replicated 1x, 2x, 4x (ids
  suffixed), to show the per-case cost stays constant.

Derived: ``overhead = matrix_s / floor_s``, ``speedup_n2 = matrix_s /
matrix_n2_s``, per-cell cost per scale. ``--markdown FILE`` appends a table
to e.g. ``benchmarks/RESULTS.md``; ``--jsonl FILE`` appends the figures as
one JSON line, and ``--table FILE`` prints the markdown table of such a file
(one row per env) instead of measuring.

Run it with each env's interpreter and its framework group, e.g.
``.tox/torch-compile/bin/python benchmarks/bench.py --framework torch.compile``
(set the env's variables, such as ``KERAS_BACKEND``, as tox.ini does).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

FLOOR = r"""
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
from adapters import BUILTIN
from bnconform.adapter import load_adapter
from bnconform.arrays import generate
from bnconform.catalogue import load_catalogue
cat = load_catalogue([{cases!r}], {root!r})
arrays = {{c.id: generate(c) for c in cat.cases}}
import {module}
t1 = time.perf_counter()
adapters = [load_adapter(t) for t, fw in BUILTIN.values() if fw == {framework!r}]
adapters = [a for a in adapters if a.available() is None]
for a in adapters:
    for c in cat.cases:
        if a.capabilities(c) is None:
            try:
                a.run(c, arrays[c.id])
            except Exception:
                pass
print(time.perf_counter() - t1)
"""


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def best(fn, repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def replicate(cases_dir: Path, factor: int, out: Path) -> int:
    """Copy the catalogue ``factor`` times with suffixed ids; returns the case count."""
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in sorted(cases_dir.glob("*.yaml")):
        data = yaml.safe_load(f.read_text())
        cases = []
        for k in range(factor):
            for case in data["cases"]:
                cases.append({**case, "id": f"{case['id']}-x{k}"})
        n += len(cases)
        (out / f.name).write_text(yaml.safe_dump({**data, "cases": cases}, sort_keys=False))
    return n


COLUMNS = ("cells", "import_s", "bn_calls_s", "floor_s", "matrix_s", "matrix_n1_s", "matrix_n2_s", "overhead",
           "speedup_n2")


def table(rows: list[dict]) -> str:
    """Markdown table, one row per measured framework group."""
    lines = ["| group | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for r in rows:
        cells = [f"{r[k]:.2f}" if isinstance(r[k], float) else str(r[k]) for k in COLUMNS]
        lines.append(f"| {r['framework']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="torch")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--scales", default="1,2,4", help="catalogue replication factors (empty: skip)")
    p.add_argument("--markdown", type=Path, default=None, help="append a results table to this file")
    p.add_argument("--jsonl", type=Path, default=None, help="append the figures as one JSON line to this file")
    p.add_argument("--table", type=Path, default=None, help="print the markdown table of a --jsonl file and exit")
    args = p.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]))
        return 0
    py, fw = sys.executable, args.framework
    env = {**os.environ, "BNCONFORM_ENV": "bench"}
    (ROOT / ".bench").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=ROOT / ".bench"))  # inside the rootdir: conftest applies
    try:
        pytest = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--framework", fw, "--results-dir", str(work / "r")]
        out = {"framework": fw, "python": platform.python_version(), "machine": platform.platform(),
               "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        out["import_s"] = best(lambda: timed([py, "-c", f"import {fw.split('.')[0]}"], ROOT), args.repeat)
        floor_script = work / "floor.py"
        floor_script.write_text(FLOOR.format(root=str(ROOT), cases=str(ROOT / "cases"), framework=fw,
                                                module=fw.split(".")[0]))
        calls = min(float(subprocess.run([py, str(floor_script)], cwd=ROOT, capture_output=True, text=True).stdout)
                    for _ in range(args.repeat))
        out["bn_calls_s"] = calls
        out["floor_s"] = out["import_s"] + calls
        out["matrix_s"] = best(lambda: timed(pytest + ["cases"], ROOT, env), args.repeat)
        out["matrix_n1_s"] = best(lambda: timed(pytest + ["cases", "-n", "1"], ROOT, env), args.repeat)
        out["matrix_n2_s"] = best(lambda: timed(pytest + ["cases", "-n", "2"], ROOT, env), args.repeat)
        out["overhead"] = out["matrix_s"] / out["floor_s"]
        out["speedup_n2"] = out["matrix_s"] / out["matrix_n2_s"]
        cells = sum(1 for _ in open(work / "r" / "bench.jsonl"))
        out["scale"] = []
        for factor in (int(f) for f in args.scales.split(",") if f):
            d = work / f"x{factor}" / "cases"
            n = replicate(ROOT / "cases", factor, d)
            # conftest + adapters are found through the repo root on sys.path
            t = best(lambda: timed(pytest + [str(d)], ROOT, env), args.repeat)
            out["scale"].append({"factor": factor, "cases": n, "matrix_s": t})
        for s in out["scale"]:
            s["per_case_ms"] = 1000 * (s["matrix_s"] - out["import_s"]) / s["cases"]
        out["cells"] = cells
        print(json.dumps(out, indent=2))
        if args.jsonl:
            with open(args.jsonl, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(out) + "\n")
        if args.markdown:
            lines = [f"\n## {fw} — {out['date']} — {out['machine']}, {out['cpus']} CPUs, Python {out['python']}\n",
                     "| measure | value |", "|---|---|"]
            for key in COLUMNS:
                v = out[key]
                lines.append(f"| {key} | {v:.2f} |" if isinstance(v, float) else f"| {key} | {v} |")
            lines += ["", "| catalogue | cases | matrix s | per case ms (excl. import) |", "|---|---|---|---|"]
            lines += [f"| {s['factor']}x | {s['cases']} | {s['matrix_s']:.2f} | {s['per_case_ms']:.1f} |" for s in out["scale"]]
            with open(args.markdown, "a", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
