"""Writes the report fixtures: small, hand-written records (run from this directory).

current/: fw_x (2 adapters) and fw_y (1 adapter), 5 cases, every verdict, a second fw_x shard
(fw_x_mac.jsonl: one duplicate, one conflict, one truncated line) and a case whose id, title,
source and error message carry markup that must render as text.
baseline/: an older run: fw_y 2.2, one case and one adapter (fw_z) since removed.
"""
import json
def rec(case, adapter, fw, ver, verdict, env, theme="training", tags=("train",), sources=None, reason=None,
        divergences=(), comparisons=(), nodeid=True, title=None, platform="linux-x86_64"):
    return {"schema_version": 1, "case_id": case, "case_file": f"cases/{theme}.yaml", "theme": theme,
            "title": title or f"{case} title", "behaviour": f"What {case} checks.", "tags": list(tags),
            "sources": sources or [{"title": "Ioffe & Szegedy 2015, Alg. 1", "url": "https://arxiv.org/abs/1502.03167"}],
            "adapter": adapter, "framework": fw, "framework_version": ver, "device": "cpu", "verdict": verdict,
            "reason": reason, "divergences": list(divergences), "comparisons": list(comparisons),
            "canonical_comparisons": [], "not_observed": [], "duration_s": 0.01, "env": env, "python": "3.11.7",
            "platform": platform, "timestamp": "2026-01-02T03:04:05+00:00",
            "nodeid": f"cases/{theme}.yaml::{case}[{adapter}]" if nodeid else None}
def cmp(step, obs, expected, actual, tol, op="forward(train)"):
    err = max(abs(a - e) for a, e in zip(expected, actual))
    ratio = err / tol
    return {"step": step, "op": op, "observable": obs, "passed": ratio <= 1, "max_abs_err": err,
            "max_rel_err": err / max(abs(e) for e in expected), "tol_at_worst": tol, "ratio": ratio,
            "headroom": (1 / ratio) if ratio else None, "message": None, "expected": expected, "actual": actual}
def traj(biased=False, canonical=True):
    """running_mean/var over 3 steps; biased: the framework's running_var is 0.9x the canonical one;
    canonical=False: compared against the oracle with the biased-variance divergence applied."""
    out = []
    for s in range(3):
        m = [0.1 * (s + 1), -0.2 * (s + 1)]
        v = [1 + 0.1 * s, 0.9 + 0.05 * s]
        av = [x * (0.9 if biased else 1.0) + 1e-8 for x in v]
        ev = v if canonical else [x * 0.9 for x in v]
        out += [cmp(s, "running_mean", m, [x + 1e-8 for x in m], 1e-6), cmp(s, "running_var", ev, av, 1e-6)]
    return out
BIASED = {"id": "biased-running-var", "kind": "quirk", "summary": "running_var uses the biased batch variance",
          "source": "https://example.org/fw_y/batchnorm.py", "options": {"running_var_correction": "biased"},
          "versions": None, "issue": None, "finding": None, "observables": [], "raises": None}
SEED = [{"file": "000_seed.txt", "title": "Forum: BN running variance differs between frameworks (question 1)"},
        {"file": "000_seed.txt", "title": "Forum: BN running variance differs between frameworks (answer)"}]
A, B, C = ("fw_x.BatchNorm", "fw_x", "1.0"), ("fw_x.functional", "fw_x", "1.0"), ("fw_y.BN", "fw_y", "2.3")
def current():
    a = [rec("ema-3steps", *A, "conforms", "fw_x", comparisons=traj(), sources=SEED, tags=("train", "ema")),
         rec("eval-uses-running", *A, "conforms", "fw_x", theme="inference", tags=("eval",)),
         rec("fp16-train", *A, "error", "fw_x", theme="numerics", tags=("dtype",),
             reason="RuntimeError: \"batch_norm\" not implemented for 'Half'\n  File \"adapters/fw_x.py\", line 12"),
         rec("nhwc-train", *A, "unsupported", "fw_x", theme="layouts", tags=("layout",),
             reason="fw_x.BatchNorm has no channels-last layout"),
         rec("ema-3steps", *B, "conforms", "fw_x", comparisons=traj(), sources=SEED, tags=("train", "ema")),
         rec("eval-uses-running", *B, "conforms", "fw_x", theme="inference", tags=("eval",)),
         rec("fp16-train", *B, "fails", "fw_x", theme="numerics", tags=("dtype",),
             reason="differs from the canonical oracle: step 0 forward(train) output: max abs err 0.01 > tol 0.001 (x10)",
             comparisons=[cmp(0, "output", [1.0, 2.0], [1.01, 2.0], 0.001)])]
    quirk = rec("ema-3steps", *C, "quirk", "fw_y", comparisons=traj(biased=True, canonical=False), sources=SEED,
                tags=("train", "ema"), divergences=[BIASED])
    quirk["canonical_comparisons"] = traj(biased=True)
    y = [quirk,
         rec("eval-uses-running", *C, "conforms", "fw_y", theme="inference", tags=("eval",)),
         rec("fp16-train", *C, "known_bug", "fw_y", theme="numerics", tags=("dtype",),
             divergences=[{**BIASED, "id": "fp16-accumulates-in-fp16", "kind": "known_bug", "options": {},
                           "summary": "float16 statistics accumulate in float16", "issue": "https://example.org/issues/1",
                           "finding": "findings/fw_y_fp16.py", "observables": ["output"]}]),
         rec("nhwc-train", *C, "conforms", "fw_y", theme="layouts", tags=("layout",)),
         rec("<script>window.__pwned=1</script>", *C, "error", "fw_y", theme="numerics", tags=("xss",),
             title="<b>bold?</b>", sources=[{"title": "<img src=x onerror=\"window.__pwned=2\">", "url": "javascript:window.__pwned=3"}],
             reason="ValueError: <script>window.__pwned=4</script> </script><script>window.__pwned=5</script>")]
    return a, y
def baseline():
    a = [rec("ema-3steps", *A, "conforms", "fw_x"), rec("eval-uses-running", *A, "conforms", "fw_x", theme="inference"),
         rec("fp16-train", *A, "conforms", "fw_x", theme="numerics"),
         rec("nhwc-train", *A, "unsupported", "fw_x", theme="layouts"),
         rec("old-removed-case", *A, "conforms", "fw_x"),
         rec("ema-3steps", *B, "conforms", "fw_x"), rec("fp16-train", *B, "conforms", "fw_x", theme="numerics"),
         rec("ema-3steps", "fw_z.Old", "fw_z", "0.1", "conforms", "fw_z")]
    C2 = (C[0], C[1], "2.2")
    y = [rec("ema-3steps", *C2, "conforms", "fw_y"),
         rec("eval-uses-running", *C2, "conforms", "fw_y", theme="inference"),
         rec("fp16-train", *C2, "known_bug", "fw_y", theme="numerics", divergences=[{"id": "fp16-accumulates-in-fp16", "kind": "known_bug"}]),
         rec("nhwc-train", *C2, "conforms", "fw_y", theme="layouts")]
    return a, y
def dump(path, recs, extra=""):
    with open(path, "w") as fh:
        for r in recs:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
        fh.write(extra)
a, y = current()
dump("current/fw_x.jsonl", a)
dump("current/fw_y.jsonl", y)
# a second machine re-ran two fw_x cells: one agrees (duplicate), one disagrees (conflict); its last line was cut off
dup = [r for r in a if r["case_id"] == "eval-uses-running" and r["adapter"] == A[0]][0]
con = dict([r for r in a if r["case_id"] == "nhwc-train"][0], verdict="conforms", reason=None, platform="darwin-arm64")
dump("current/fw_x_mac.jsonl", [dict(dup, platform="darwin-arm64"), con], extra='{"schema_version": 1, "case_id": "trunc')
a, y = baseline()
dump("baseline/fw_x.jsonl", a)
dump("baseline/fw_y.jsonl", y)
# explore/explore-20261130T120000Z-s0.json (a `bnconform explore` summary for the Explored view: fw_x's two
# adapters, 60 generated cases each, two undocumented divergences on fw_x.BatchNorm, one with markup in its
# worst error) is hand-written too, in the format of bnconform.explore.summary().
