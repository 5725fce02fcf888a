"""Size and generation time of the HTML report (``bnconform report``) on a set of shards.

Usage: ``python benchmarks/report_bench.py SHARDS... [--code DIR] [--out FILE] [REPORT OPTIONS]``
(options it does not know, e.g. ``--no-plots``, go to ``bnconform report``).

Runs ``python -m bnconform.cli report SHARDS --out FILE`` once, in a fresh process
whose working directory is ``--code`` (a checkout: its ``bnconform`` is the one
imported, so the same interpreter measures two versions of the code), with an
empty ``XDG_CACHE_HOME`` (no figure cache carried over from an earlier run).
Prints one Markdown table row: cells, wall seconds, CPU seconds of the child
(user + sys: less sensitive to other load on the machine than wall time), peak
RSS, page size, and where the bytes go (the ``#bn-data`` JSON, the ``#bn-figs``
images of reports that prerendered them, the two matrices, the inlined scripts).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def breakdown(html: str) -> dict[str, int]:
    """Bytes (UTF-8) of the page and of its parts; a part the page does not have is 0."""
    def size(pattern: str) -> int:
        m = re.search(pattern, html, re.S)
        return len(m.group(0).encode("utf-8")) if m else 0
    return {"page": len(html.encode("utf-8")),
            "data": size(r'<script type="application/json" id="bn-data">.*?</script>'),
            "figs": size(r'<script type="application/json" id="bn-figs">.*?</script>'),
            "matrices": size(r'<section id="view-theme".*?</section>') + size(r'<section id="view-source".*?</section>'),
            "uplot": size(r'<script id="uplot-js">.*?</script>') + size(r'<style id="uplot-css">.*?</style>')}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("shards", nargs="+", help="shard files or directories")
    p.add_argument("--code", default=".", help="checkout whose bnconform is measured (default: .)")
    p.add_argument("--out", default=None, help="the report to write (default: a temporary file)")
    args, extra = p.parse_known_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="report-bench-")) / "parity.html"
    cmd = [sys.executable, "-m", "bnconform.cli", "report", *map(str, (Path(s).resolve() for s in args.shards)),
           "--out", str(out.resolve()), *extra]
    with tempfile.TemporaryDirectory(prefix="report-bench-cache-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache, "PYTHONDONTWRITEBYTECODE": "1"}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=args.code, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cells = re.search(r"report: (\d+) cells", proc.stdout)
    b = breakdown(out.read_text(encoding="utf-8"))
    mb = lambda n: f"{n / 1e6:.2f}"  # noqa: E731
    print("| cells | wall_s | cpu_s | peak_rss_MB | page_MB | data_MB | figs_MB | matrices_MB | uplot_MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {cells.group(1) if cells else '?'} | {wall:.1f} | {cpu:.1f} | {after.ru_maxrss / 1024:.0f} | "
          f"{mb(b['page'])} | {mb(b['data'])} | {mb(b['figs'])} | {mb(b['matrices'])} | {mb(b['uplot'])} |")
    print(f"report: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
