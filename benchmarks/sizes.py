"""Cost per case against its size: the suite's cell vs the bare framework calls.

For one framework group (default ``torch``) and one realistic case shape scaled
to ``m`` values per channel (``--sizes``, default 2^10 .. 2^21), each the best
of ``--repeat`` runs in this process:

* ``bare_s``  — ``adapter.run(case, arrays)`` of every adapter of the group that
  supports the case: the framework's own calls (tensor creation, forward,
  backward, state read-back), nothing else;
* ``suite_s`` — ``engine.run_cell`` of the same adapters from cold caches: input
  generation (once per case), the oracle (once per case), the adapter run and
  the comparison, i.e. what one case costs in a pytest run minus pytest itself;
* ``gen_s`` / ``oracle_s`` / ``compare_s`` — the parts of ``suite_s`` that are the
  suite's own (generation and oracle once per case, comparison per cell).

Run with the env's interpreter from the repository root, e.g.
``.tox/torch/bin/python benchmarks/sizes.py --framework torch``; ``--markdown``
prints a table for ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters import BUILTIN  # noqa: E402
from bnconform import engine  # noqa: E402
from bnconform.adapter import load_adapter  # noqa: E402
from bnconform.arrays import generate  # noqa: E402
from bnconform.catalogue import Case  # noqa: E402
from bnconform.compare import compare  # noqa: E402
from bnconform.drive import run_program  # noqa: E402
from bnconform.oracle import CANONICAL, simulate  # noqa: E402


def case_of(m: int, dtype: str) -> Case:
    """A ResNet-like train + backward + eval case, (N, 2, H, W) with N * H * W = m."""
    n = 8 if m >= 8 * 64 else 1
    hw = m // n
    h = 2 ** ((hw.bit_length() - 1) // 2)
    w = hw // h
    return Case.model_validate(dict(
        id=f"size-{m}-{dtype}", title="size sweep", behaviour="cost", source=[{"title": "benchmarks/sizes.py"}],
        layer={"num_features": 2}, input={"shape": [n, 2, h, w], "dtype": dtype, "seed": 1,
                                          "distribution": {"mean": 0.5, "std": 1.5}},
        steps=[{"op": "forward", "mode": "train"}, {"op": "backward"}, {"op": "forward", "mode": "eval"}]))


def measure(framework: str, m: int, dtype: str, repeat: int) -> dict:
    case = case_of(m, dtype)
    adapters = [load_adapter(t) for t, fw in BUILTIN.values() if fw == framework]
    adapters = [a for a in adapters if a.available() is None and a.capabilities(case) is None]
    arrays = generate(case)
    for a in adapters:  # warm-up: first-call costs (kernels, imports) are not per case
        a.run(case, copy.deepcopy(arrays))
    best = {}

    def keep(key, value):
        best[key] = min(best.get(key, float("inf")), value)

    for _ in range(repeat):
        t = time.perf_counter()
        obs = [a.run(case, copy.deepcopy(arrays)) for a in adapters]
        keep("bare_s", time.perf_counter() - t)
        t = time.perf_counter()
        generate(case)
        keep("gen_s", time.perf_counter() - t)
        t = time.perf_counter()
        exp = simulate(case, arrays, CANONICAL)
        keep("oracle_s", time.perf_counter() - t)
        t = time.perf_counter()
        for a, o in zip(adapters, obs):
            compare(exp, o, case, a.observables)
        keep("compare_s", time.perf_counter() - t)
        engine._ARRAYS.clear(), engine._EXPECT.clear(), engine._AGREE.clear(), engine._LARGE.clear()
        t = time.perf_counter()
        verdicts = [engine.run_cell(case, a).verdict for a in adapters]
        keep("suite_s", time.perf_counter() - t)
    return dict(framework=framework, m=m, dtype=dtype, cells=len(adapters), verdicts=sorted(set(verdicts)), **best,
                overhead=best["suite_s"] / best["bare_s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="torch")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sizes", default=",".join(str(2**k) for k in (10, 12, 14, 16, 18, 20, 21)))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    rows = [measure(args.framework, int(m), args.dtype, args.repeat) for m in args.sizes.split(",")]
    if args.markdown:
        print("| m (values/channel) | cells | bare framework s | suite s | suite / bare | gen s | oracle s | compare s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['m']:,} | {r['cells']} | {r['bare_s']:.3f} | {r['suite_s']:.3f} | {r['overhead']:.2f} | "
                  f"{r['gen_s']:.3f} | {r['oracle_s']:.3f} | {r['compare_s']:.3f} |")
    else:
        for r in rows:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
