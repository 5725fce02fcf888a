"""Per-case figures: matplotlib (Agg) drawn to inline SVG, cached on disk, drawn in parallel.

One figure per case (every adapter of the case in it): the running_mean /
running_var trajectories per step against the canonical oracle (and the oracle
with an adapter's documented divergences, dashed, where it differs), and the
worst error/tolerance ratio per observable on a log axis.

The figure is a pure function of :func:`_figure_input` (plain data taken from
the records' comparisons), which is also the cache key, together with a hash
of this module and matplotlib's version: an unchanged case is never redrawn.
The SVG text is sanitised so that nothing from the results can close the
``<script type="application/json">`` element it is embedded in (the page
shows it base64-encoded through ``<img src="data:...">``, where no script runs).

matplotlib is optional (``pip install bnconform[report]``): :func:`case_figures`
raises ``ImportError`` without it and the report renders without plots.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path

from ..results import ResultRecord
from ..resultset import Merged

#: Observables with one value per channel whose trajectories over steps are plotted.
TRAJECTORY_OBSERVABLES = ("running_mean", "running_var")
#: Channels drawn per trajectory (the rest are summarised in the title).
PLOT_CHANNELS = 4

def _figure_input(case_id: str, recs: list[ResultRecord]) -> dict | None:
    """What one case's figure shows, as plain data (also the cache key)."""
    traj: dict[str, dict] = {}
    oracle: dict[str, dict] = {}
    ratios: dict[str, dict] = {}
    alt: dict[str, dict] = {}  # the oracle with an adapter's documented divergences, where it was used
    for r in sorted(recs, key=lambda r: r.adapter):
        canon = r.canonical_comparisons or r.comparisons
        for c in canon:
            obs = c.get("observable")
            if obs in TRAJECTORY_OBSERVABLES and isinstance(c.get("expected"), list):
                oracle.setdefault(obs, {}).setdefault(str(c["step"]), c["expected"])
        for c in r.comparisons:
            obs = c.get("observable")
            if obs in TRAJECTORY_OBSERVABLES and isinstance(c.get("actual"), list):
                traj.setdefault(obs, {}).setdefault(r.adapter, {})[str(c["step"])] = c["actual"]
            if r.canonical_comparisons and obs in TRAJECTORY_OBSERVABLES and isinstance(c.get("expected"), list):
                alt.setdefault(obs, {}).setdefault(r.adapter, {})[str(c["step"])] = c["expected"]
            ratio = c.get("ratio")
            if ratio is None and c.get("passed") is False:
                ratio = math.inf
            prev = ratios.setdefault(r.adapter, {}).get(obs)
            if ratio is not None and (prev is None or ratio > prev):
                ratios[r.adapter][obs] = ratio
    if not ratios and not traj:
        return None
    ratios = {a: {o: (None if math.isinf(v) else v) for o, v in d.items()} for a, d in ratios.items() if d}
    # keep a divergent oracle only where it differs from the canonical one
    for obs, per in alt.items():
        for a in list(per):
            if all(per[a][st] == oracle.get(obs, {}).get(st) for st in per[a]):
                del per[a]
    alt = {o: per for o, per in alt.items() if per}
    return {"case": case_id, "oracle": oracle, "traj": traj, "alt": alt, "ratios": ratios}


def _render_figure(inp: dict) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    adapters = sorted(set(inp["ratios"]) | {a for t in inp["traj"].values() for a in t})
    cmap = plt.get_cmap("tab10" if len(adapters) <= 10 else "tab20")
    colour = {a: cmap(i % cmap.N) for i, a in enumerate(adapters)}
    markers = "osD^v<>phX*"
    traj_obs = [o for o in TRAJECTORY_OBSERVABLES if o in inp["traj"] or o in inp["oracle"]]
    nrows = 2 if traj_obs else 1
    n_alt = len({a for per in inp["alt"].values() for a in per})
    ncol = 3
    legend_rows = -(-(len(adapters) + n_alt + (1 if traj_obs else 0)) // ncol)
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "bnconform", "font.size": 8,
                         "axes.titlesize": 9, "figure.dpi": 72}):
        fig = plt.figure(figsize=(7.2, 2.6 * nrows + 0.16 * legend_rows))
        gs = fig.add_gridspec(nrows, max(1, len(traj_obs)))
        for k, obs in enumerate(traj_obs):
            ax = fig.add_subplot(gs[0, k])
            steps = sorted({int(s) for s in inp["oracle"].get(obs, {})}
                           | {int(s) for t in inp["traj"].get(obs, {}).values() for s in t})
            nch = max([len(v) for v in inp["oracle"].get(obs, {}).values()]
                      + [len(v) for t in inp["traj"].get(obs, {}).values() for v in t.values()] + [0])
            shown = min(nch, PLOT_CHANNELS)
            ys = inp["oracle"].get(obs, {})
            for ch in range(shown):
                pts = [(s, ys[str(s)][ch]) for s in steps if str(s) in ys and ch < len(ys[str(s)])]
                pts = [(s, float("nan") if v is None else v) for s, v in pts]
                if pts:
                    ax.plot(*zip(*pts), color="black", lw=1.0, marker="o", ms=6, mfc="none",
                            label="oracle (canonical)" if ch == 0 else None, zorder=1)
            n = max(1, len(adapters))
            for i, a in enumerate(adapters):
                t = inp["alt"].get(obs, {}).get(a)
                for ch in range(shown) if t else ():
                    pts = [(int(s), float("nan") if v[ch] is None else v[ch])
                           for s, v in sorted(t.items(), key=lambda kv: int(kv[0])) if ch < len(v)]
                    ax.plot(*zip(*pts), ls="--", lw=1.0, color=colour[a], zorder=1,
                            label=f"oracle with {a}'s divergences" if ch == 0 else None)
            for i, a in enumerate(adapters):
                t = inp["traj"].get(obs, {}).get(a)
                if not t:
                    continue
                dx = (i - (n - 1) / 2) * 0.06
                for ch in range(shown):
                    pts = [(int(s) + dx, float("nan") if v[ch] is None else v[ch])
                           for s, v in sorted(t.items(), key=lambda kv: int(kv[0])) if ch < len(v)]
                    if pts:
                        ax.plot(*zip(*pts), ls="none", marker=markers[i % len(markers)], ms=3.5,
                                color=colour[a], label=a if ch == 0 else None, zorder=2)
            more = f" (channels 0–{shown - 1} of {nch})" if nch > shown else ""
            ax.set_title(f"{obs} per step{more}")
            ax.set_xlabel("step")
            ax.set_xticks(steps if len(steps) <= 12 else steps[:: max(1, len(steps) // 10)])
            ax.yaxis.set_major_locator(MaxNLocator(5))
            ax.grid(alpha=0.3)
        ax = fig.add_subplot(gs[nrows - 1, :])
        observables = sorted({o for d in inp["ratios"].values() for o in d})
        floor, top = 1e-4, 1e4
        xs = {o: j for j, o in enumerate(observables)}
        n = max(1, len(adapters))
        for i, a in enumerate(adapters):
            d = inp["ratios"].get(a, {})
            if not d:
                continue
            dx = (i - (n - 1) / 2) * (0.6 / n)
            pts = [(xs[o] + dx, v) for o, v in d.items()]
            ok = [(x, min(max(v, floor), top)) for x, v in pts if v is not None]
            bad = [(x, top) for x, v in pts if v is None]
            if ok:
                ax.plot(*zip(*ok), ls="none", marker=markers[i % len(markers)], ms=4.5, color=colour[a],
                        label=a)
            if bad:
                ax.plot(*zip(*bad), ls="none", marker="X", ms=7, color=colour[a])
        ax.axhline(1.0, color="#b00", lw=1, ls="--")
        ax.text(len(observables) - 0.5 if observables else 0.5, 1.15, "tolerance", color="#b00", ha="right",
                va="bottom")
        ax.set_yscale("log")
        ax.set_ylim(floor * 0.5, top * 2)
        ax.yaxis.set_major_locator(LogLocator(base=100.0, numticks=6))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # no mathtext: 3x faster
        ax.set_xticks(range(len(observables)), observables, rotation=18, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, max(len(observables) - 0.4, 0.6))
        ax.set_ylabel("worst |err| / tol")
        ax.set_title(f"error vs tolerance per observable (worst step; ≤{floor:g} drawn at {floor:g}; "
                     "X = structural failure)")
        ax.grid(alpha=0.3, axis="y")
        handles, labels = [], []
        for a_ in fig.axes:
            for h, lab in zip(*a_.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        if handles:
            fig.legend(handles, labels, loc="upper center", ncol=min(ncol, len(labels)), fontsize=7,
                       bbox_to_anchor=(0.5, 1.0), frameon=False)
        legend_rows = -(-len(labels) // ncol) if handles else 0
        height = fig.get_figheight() * 72  # points
        top = 1 - (legend_rows * 11 + 26) / height
        fig.subplots_adjust(left=0.1, right=0.985, bottom=46 / height, top=top, hspace=0.62, wspace=0.22)
        import io
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
        plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r"font-family: [^;\"]*", "font-family: 'DejaVu Sans', Arial, sans-serif", svg)
    svg = re.sub(r"\n\s+", "\n", svg)
    # 2 decimals are plenty at this size; halves the file. Only geometry attributes, never <text> content.
    svg = re.sub(r'(\s(?:x|y|d|transform|width|height|style)=")([^"]*)"',
                 lambda m: m.group(1) + re.sub(r"(\d+\.\d\d)\d+", r"\1", m.group(2)) + '"', svg)
    # Text from results reaches the SVG only XML-escaped; make sure it cannot close the embedding element.
    return re.sub(r"(?i)</script", "&lt;/script", svg)


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """Hash of this module and matplotlib's version: part of every figure's cache key."""
    import matplotlib
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16] + matplotlib.__version__


def default_figure_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bnconform" / "figures"


def case_figures(merged: Merged, cache_dir: str | Path | None = None) -> dict[str, str]:
    """One SVG per case (trajectories of the running statistics + error vs tolerance).

    Cached by the hash of the figure's input data: unchanged cases are not redrawn.
    """
    by_case: dict[str, list[ResultRecord]] = defaultdict(list)
    for r in merged.records:
        by_case[r.case_id].append(r)
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError:  # read-only home, say: draw without a cache
            cache = None
    code = _code_version()
    out: dict[str, str] = {}
    todo: list[tuple[str, dict, Path | None]] = []
    for case_id, recs in sorted(by_case.items()):
        inp = _figure_input(case_id, recs)
        if inp is None:
            continue
        key = hashlib.sha256((code + json.dumps(inp, sort_keys=True)).encode()).hexdigest()[:24]
        path = cache / f"{key}.svg" if cache else None
        if path and path.exists():
            out[case_id] = path.read_text(encoding="utf-8")
        else:
            todo.append((case_id, inp, path))
    workers = min(os.cpu_count() or 1, 8, len(todo) // 8)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(workers) as pool:
            svgs = list(pool.map(_render_figure, [inp for _, inp, _ in todo], chunksize=4))
    else:
        svgs = [_render_figure(inp) for _, inp, _ in todo]
    for (case_id, _, path), svg in zip(todo, svgs):
        if path:
            try:
                path.write_text(svg, encoding="utf-8")
            except OSError:
                pass
        out[case_id] = svg
    return out

