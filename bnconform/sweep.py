"""``bnconform sweep``: run the catalogue on every declared release of a framework (issue 17).

The release list is data (``sweep.yaml`` at the checkout root): per framework the
``--framework`` groups to run, extra environment variables, and the releases with
the requirement specifiers that install each one (the framework and its companion
pins). For every selected release the driver

1. creates a fresh virtual env with ``uv venv`` under ``--envs`` (default
   ``/tmp/sweep-envs``),
2. installs this checkout (editable) and the release's pins with ``uv pip install``
   in one resolve,
3. runs ``python -m pytest cases --framework G ... -n 2`` in it with
   ``BNCONFORM_ENV=<framework>-<version>``, writing the shard
   ``<out>/<framework>-<version>.jsonl.gz`` (gzipped; default ``reports/sweep``),
4. deletes the env, and appends the measured cost (install and run seconds, env
   size on disk, pytest exit status, verdict counts) to ``--cost`` (default
   ``benchmarks/sweep_cost.jsonl``).

A failing install is recorded in the cost file (``"install": "failed"`` with the
tail of uv's message) and the sweep goes on with the next release; no shard is
written for it. ``--keep-cache`` keeps uv's cache (``--cache-dir``, default
``<envs>/uv-cache``) after each framework; by default it is deleted once the
framework's last release has run, so the disk holds at most one framework's wheels.

Shards record ``suite_commit`` (``BNCONFORM_COMMIT``: ``git rev-parse HEAD``, with
``-dirty`` when the checkout has uncommitted changes) and the catalogue digest
(cases + expectations) they were judged with; ``bnconform gate`` between two
swept shards needs no rerun (README "The release sweep").
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Release:
    framework: str
    version: str
    pip: tuple[str, ...]
    groups: tuple[str, ...]
    env: dict = field(default_factory=dict, hash=False)
    #: ``uv pip install`` options of this framework (e.g. ``--find-links``)
    uv_args: tuple[str, ...] = ()
    #: installed afterwards with ``--no-deps`` (tf-keras: its ``tensorflow`` dependency would overlay tensorflow-cpu)
    pip_no_deps: tuple[str, ...] = ()
    #: ``uv pip install --override``: requirements that replace a dependency's declared ones (TF 2.12/2.13
    #: declare typing-extensions<4.6, which pydantic 2.7+ cannot share; the runtime works with newer)
    overrides: tuple[str, ...] = ()
    #: delete uv's cache after THIS release, not only after the framework's last one (torch: each release's
    #: CUDA wheels are ~3 GB, a framework's worth would not fit the disk)
    clear_cache: bool = False

    @property
    def name(self) -> str:
        return f"{self.framework}-{self.version}"


def load_releases(path: Path) -> tuple[str, list[Release]]:
    """``(python, releases)`` from the sweep file (PyYAML ``safe_load``)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out = []
    for fw, spec in data["frameworks"].items():
        for r in spec["releases"]:
            out.append(Release(framework=fw, version=str(r["version"]), pip=tuple(r["pip"]),
                               groups=tuple(r.get("groups", spec["groups"])),
                               env={**spec.get("env", {}), **r.get("env", {})},
                               uv_args=tuple(spec.get("uv_args", [])), pip_no_deps=tuple(r.get("pip_no_deps", [])),
                               overrides=tuple(r.get("overrides", [])),
                               clear_cache=spec.get("clear_cache") == "per_release"))
    return str(data.get("python", "3.11")), out


def _commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _counts(shard: Path) -> dict[str, int]:
    c: Counter = Counter()
    if shard.exists():
        for line in shard.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "verdict" in rec and "kind" not in rec:
                c[rec["verdict"]] += 1
    return dict(sorted(c.items()))


def run_release(rel: Release, python: str, envs: Path, out: Path, cache: Path, pytest_args: list[str],
                uv: str) -> dict:
    """Build, run and delete one release's env; return its cost record."""
    venv = envs / rel.name
    shutil.rmtree(venv, ignore_errors=True)
    env = {**os.environ, "UV_CACHE_DIR": str(cache)}
    env.pop("VIRTUAL_ENV", None)
    cost: dict = {"env": rel.name, "framework": rel.framework, "version": rel.version, "pip": list(rel.pip),
                  **({"overrides": list(rel.overrides)} if rel.overrides else {})}
    t0 = time.monotonic()
    subprocess.run([uv, "venv", "--quiet", "--python", python, str(venv)], env=env, check=True)
    py = venv / "bin" / "python"
    extra = []
    if rel.overrides:
        (venv / "overrides.txt").write_text("\n".join(rel.overrides) + "\n", encoding="utf-8")
        extra = ["--override", str(venv / "overrides.txt")]
    inst = subprocess.run([uv, "pip", "install", "--quiet", "--python", str(py), *rel.uv_args, *extra,
                           "-e", str(ROOT), *rel.pip], env=env, capture_output=True, text=True)
    if inst.returncode == 0 and rel.pip_no_deps:
        inst = subprocess.run([uv, "pip", "install", "--quiet", "--python", str(py), *rel.uv_args, "--no-deps",
                               *rel.pip_no_deps], env=env, capture_output=True, text=True)
    cost["install_s"] = round(time.monotonic() - t0, 1)
    if inst.returncode != 0:
        cost["install"] = "failed"
        cost["message"] = (inst.stderr or inst.stdout)[-2000:]
        shutil.rmtree(venv, ignore_errors=True)
        return cost
    cost["env_bytes"] = _du(venv)
    frozen = subprocess.run([uv, "pip", "freeze", "--python", str(py)], env=env, capture_output=True, text=True)
    cost["installed"] = [ln for ln in frozen.stdout.splitlines()
                         if ln.split("==")[0].lower().replace("_", "-") in _companions(rel)]
    tmp = envs / f"{rel.name}-results"
    shutil.rmtree(tmp, ignore_errors=True)
    run_env = {**os.environ, **{k: str(v) for k, v in rel.env.items()}, "BNCONFORM_ENV": rel.name,
               "PYTHONDONTWRITEBYTECODE": "1", "CUDA_VISIBLE_DEVICES": ""}
    run_env.pop("VIRTUAL_ENV", None)
    commit = _commit()
    if commit:
        run_env["BNCONFORM_COMMIT"] = commit
    cmd = [str(py), "-m", "pytest", "cases", *[a for g in rel.groups for a in ("--framework", g)],
           "--require-device", "-n", "2", "--timeout", "600", "--timeout-method", "thread",
           "-p", "no:cacheprovider", "-q", "--results-dir", str(tmp), *pytest_args]
    t1 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True)
    cost["run_s"] = round(time.monotonic() - t1, 1)
    cost["pytest_rc"] = proc.returncode
    shard = tmp / f"{rel.name}.jsonl"
    if shard.exists():
        out.mkdir(parents=True, exist_ok=True)
        dest = out / f"{shard.name}.gz"
        cost["verdicts"] = _counts(shard)
        # gzip: a shard is ~5 KB of JSON per cell, 7x smaller compressed; results.read_shards reads both
        with shard.open("rb") as src, dest.open("wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as dst:
            shutil.copyfileobj(src, dst)
        cost["shard"] = str(dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest)
        cost["shard_bytes"] = dest.stat().st_size
    else:
        cost["message"] = (proc.stdout + proc.stderr)[-2000:]
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    cost["total_s"] = round(time.monotonic() - t0, 1)
    return cost


def _companions(rel: Release) -> set[str]:
    names = set()
    for spec in rel.pip + rel.pip_no_deps:
        for sep in ("==", "<", ">", "~", "!", "["):
            spec = spec.split(sep)[0]
        names.add(spec.strip().lower().replace("_", "-"))
    return names | {"numpy"}


def cost_table(path: Path) -> str:
    """Markdown table of the cost records in ``path`` (the last record per env wins) with totals."""
    last: dict[str, dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            last[rec["env"]] = rec
    rows = ["| env | install s | run s | env MB | shard KB (gz) | verdicts |", "|---|---|---|---|---|---|"]
    tot = Counter()
    for rec in last.values():
        v = rec.get("verdicts") or {}
        rows.append(f"| {rec['env']} | {rec.get('install_s', '')} | {rec.get('run_s', '')} | "
                    f"{rec.get('env_bytes', 0) / 2**20:.0f} | {rec.get('shard_bytes', 0) / 2**10:.0f} | "
                    + (", ".join(f"{k} {n}" for k, n in v.items()) or rec.get("install", "no shard")) + " |")
        tot["install_s"] += rec.get("install_s", 0)
        tot["run_s"] += rec.get("run_s", 0)
        tot["shard_bytes"] += rec.get("shard_bytes", 0)
        tot["shards"] += "shard" in rec
        tot["env_max"] = max(tot["env_max"], rec.get("env_bytes", 0))
    rows.append(f"| **total {tot['shards']} shards** | {tot['install_s']:.0f} | {tot['run_s']:.0f} | "
                f"max {tot['env_max'] / 2**20:.0f} | {tot['shard_bytes'] / 2**20:.1f} MB | |")
    return "\n".join(rows)


def run(args) -> int:
    if args.cost_table:
        print(cost_table(Path(args.cost)))
        return 0
    python, releases = load_releases(Path(args.file))
    chosen = [r for r in releases
              if (not args.framework or r.framework in args.framework)
              and (not args.version or r.version in args.version)]
    if args.list:
        for r in chosen:
            print(f"{r.name:32} {' '.join(r.pip)}")
        return 0
    if not chosen:
        print("bnconform sweep: no release selected", file=sys.stderr)
        return 2
    uv = shutil.which("uv")
    if uv is None:
        print("bnconform sweep: needs uv on PATH (python -m pip install uv)", file=sys.stderr)
        return 2
    envs, out, cache = Path(args.envs), Path(args.out), Path(args.cache_dir or Path(args.envs) / "uv-cache")
    envs.mkdir(parents=True, exist_ok=True)
    cost_file = Path(args.cost)
    cost_file.parent.mkdir(parents=True, exist_ok=True)
    bad = 0
    for i, rel in enumerate(chosen):
        if args.skip_existing and (out / f"{rel.name}.jsonl.gz").exists():
            continue
        free = shutil.disk_usage(envs).free
        if free < args.min_free_gb * 2**30:
            print(f"bnconform sweep: stopping: {free / 2**30:.1f} GiB free under {envs} "
                  f"(< --min-free-gb {args.min_free_gb})", file=sys.stderr)
            return 1
        cost = run_release(rel, python, envs, out, cache, args.pytest_args, uv)
        with cost_file.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(cost) + "\n")
        print(f"{rel.name:32} install {cost['install_s']:6.1f}s  run {cost.get('run_s', 0):6.1f}s  "
              f"{cost.get('verdicts') or cost.get('install') or 'no shard'}", flush=True)
        bad += "shard" not in cost
        last_of_fw = i + 1 == len(chosen) or chosen[i + 1].framework != rel.framework
        if (last_of_fw or rel.clear_cache) and not args.keep_cache:
            shutil.rmtree(cache, ignore_errors=True)
    return 1 if bad else 0


def add_parser(sub) -> None:
    """Register ``bnconform sweep`` on an argparse sub-parser collection."""
    p = sub.add_parser("sweep", help="run the catalogue on every declared framework release (sweep.yaml), one "
                                     "uv env and one shard per release")
    p.add_argument("--file", default=str(ROOT / "sweep.yaml"), help="the release list (default: %(default)s)")
    p.add_argument("--framework", action="append", default=[], help="only this sweep framework (repeatable)")
    p.add_argument("--version", action="append", default=[], help="only this release version (repeatable)")
    p.add_argument("--out", default=str(ROOT / "reports" / "sweep"), help="shard folder (default: %(default)s)")
    p.add_argument("--envs", default="/tmp/sweep-envs", help="where the envs are created (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help="uv's cache (default: <envs>/uv-cache)")
    p.add_argument("--keep-cache", action="store_true", help="keep uv's cache after each framework")
    p.add_argument("--cost", default=str(ROOT / "benchmarks" / "sweep_cost.jsonl"),
                   help="append per-env cost records here (default: %(default)s)")
    p.add_argument("--skip-existing", action="store_true", help="skip releases whose shard exists")
    p.add_argument("--min-free-gb", type=float, default=30.0, help="stop when less disk is free (default: 30)")
    p.add_argument("--list", action="store_true", help="list the selected releases and exit")
    p.add_argument("--cost-table", action="store_true", help="print the --cost file as a markdown table and exit")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    p.set_defaults(func=run)
