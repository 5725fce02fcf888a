"""Verdict rules and the comparison model, with small fake adapters."""

import numpy as np
import pytest

from bnconform.adapter import load_adapter
from bnconform.expect import ExpectationError, parse
from bnconform.compare import compare_one, tolerance
from bnconform.engine import run_cell

from .numpy_bn import MutantBiasedRunningVar, NumpyBatchNorm, RaisingAdapter, WrongShapeAdapter
from .test_oracle import make_case



def case(dtype="float32", **layer):
    c = make_case([{"op": "forward", "mode": "train"}, {"op": "forward", "mode": "eval"}], layer or None)
    return c.model_copy(update={"input": c.input.model_copy(update={"dtype": dtype})})


#: Their documented divergences: a plug-in adapter names its expectations file.
ENGINE_EXPECTATIONS = "data/expectations/engine.yaml"


def entries(text: str):
    """Expectation entries from YAML text (the ``entries:`` list of an expectations file)."""
    return parse(text, "test.yaml").entries


class QuirkyBiased(MutantBiasedRunningVar):
    name = "quirky: documented biased"
    expectations = ENGINE_EXPECTATIONS


class DocumentedButCanonical(NumpyBatchNorm):
    name = "documented but canonical"
    expectations = ENGINE_EXPECTATIONS


class BuggyBiased(MutantBiasedRunningVar):
    name = "known bug: biased"
    expectations = ENGINE_EXPECTATIONS


class Unsupported(NumpyBatchNorm):
    name = "unsupported"

    def capabilities(self, case):
        return "cannot do that"


def test_conforms_and_fails():
    assert run_cell(case(), NumpyBatchNorm(), "1").verdict == "conforms"
    r = run_cell(case(), MutantBiasedRunningVar(), "1")
    assert r.verdict == "fails" and "running_var" in r.reason


def test_documented_quirk_is_matched_strictly():
    r = run_cell(case(), QuirkyBiased(), "1")
    assert r.verdict == "quirk" and r.divergences[0]["id"] == "biased-running-var"
    assert r.divergences[0]["ref"].endswith("tests/data/expectations/engine.yaml#biased-running-var")
    assert r.canonical_comparisons and not all(c["passed"] for c in r.canonical_comparisons)


def test_quirk_that_stops_reproducing_fails_the_gate():
    r = run_cell(case(), DocumentedButCanonical(), "1")
    assert r.verdict == "fails" and "no longer reproduce" in r.reason


def test_quirk_that_does_not_manifest_is_conforms():
    # Eval only: the running-variance correction cannot show, so nothing to judge as quirk.
    c = make_case([{"op": "forward", "mode": "eval"}])
    c = c.model_copy(update={"input": c.input.model_copy(update={"dtype": "float32"})})
    assert run_cell(c, DocumentedButCanonical(), "1").verdict == "conforms"


def test_known_bug_and_version_range():
    assert run_cell(case(), BuggyBiased(), "2.1").verdict == "known_bug"
    # Outside the documented range the divergence is not expected: plain fails.
    r = run_cell(case(), BuggyBiased(), "1.9")
    assert r.verdict == "fails" and not r.divergences
    with pytest.raises(ExpectationError, match="upstream issue"):  # a known bug needs its upstream issue
        entries("entries: [{id: x, kind: known_bug, summary: s, source: src, options: {fixed_gamma: true}}]")


def test_a_version_that_is_not_pep440_fails_closed():
    # "2.1, cuDNN 9" cannot be placed in ">=2.0": the cell is an error, never "the divergence applies".
    r = run_cell(case(), BuggyBiased(), "2.1, cuDNN 9")
    assert r.verdict == "error" and "not PEP 440" in r.reason and "engine.yaml#bug" in r.reason


def test_unsupported_error_and_bad_shapes():
    assert run_cell(case(), Unsupported(), "1").reason == "cannot do that"
    r = run_cell(case(), RaisingAdapter(), "1")
    assert r.verdict == "error" and "RuntimeError: boom" in r.reason
    r = run_cell(case(), WrongShapeAdapter(), "1")
    assert r.verdict == "fails" and "shape" in r.reason


def test_load_adapter_errors_name_the_target():
    with pytest.raises(ValueError, match="package.module:ClassName"):
        load_adapter("nocolon")
    with pytest.raises(ImportError, match="no_such_module"):
        load_adapter("no_such_module:X")
    with pytest.raises(AttributeError, match="Nope"):
        load_adapter("tests.numpy_bn:Nope")
    with pytest.raises(TypeError):
        load_adapter("numpy:ndarray")


# ------------------------------------------------------------ tolerance model

def test_float32_tolerance_is_tight_and_scales_with_magnitude():
    c = case()
    e, mag = np.array([1.0, 1.0]), np.array([1.0, 1000.0])
    tol = tolerance(e, mag, "output", c, 0)
    assert tol[0] < 1e-5 and tol[1] > 100 * tol[0] * 0.9
    assert (tolerance(e, mag, "num_batches_tracked", c, 0) == 0).all()


def test_structural_mismatches_fail_with_a_message():
    c = case()
    e, m = np.zeros(3), np.ones(3)
    assert "shape" in compare_one(np.zeros(4, np.float32), e, m, "running_mean", c, 0).message
    assert "dtype float64" in compare_one(np.zeros(3), e, m, "running_mean", c, 0).message
    assert compare_one(None, e, m, "running_mean", c, 0).message == "adapter returned no value"
    nan = compare_one(np.array([0, np.nan, 0], np.float32), e, m, "running_mean", c, 0)
    assert not nan.passed and "NaN where the oracle has a value" in nan.message
    both_nan = compare_one(np.array([0, np.nan, 0], np.float32), np.array([0, np.nan, 0]), m, "running_mean", c, 0)
    assert both_nan.passed
    assert not compare_one(np.array(3), np.array(2.0), np.array(0.0), "num_batches_tracked", c, 0).passed


def test_errors_ratios_and_relative_errors_with_and_without_non_finite_values():
    c = case()
    e, m = np.array([0.0, 2.0, -4.0]), np.ones(3)
    tol = tolerance(e, m, "running_mean", c, 0)
    a = np.array([0.0, 2.0, -4.0], np.float32) + np.array([3e-7, 0.0, -1e-6], np.float32)
    r = compare_one(a, e, m, "running_mean", c, 0)
    err = np.abs(a.astype(np.float64) - e)
    assert r.max_abs_err == err.max() and r.ratio == (err / tol).max() and r.tol_at_worst == tol[2]
    assert r.max_rel_err == np.inf  # an error where the oracle has exactly 0
    exact = compare_one(np.array([2, 3]), np.array([2.0, 2.0]), np.zeros(2), "num_batches_tracked", c, 0)
    assert exact.ratio == np.inf and exact.max_abs_err == 1.0 and exact.max_rel_err == 0.5
    # +inf where the oracle has +inf is no error; a finite value there is an infinite one
    inf_e = np.array([np.inf, 1.0, 1.0])
    same = compare_one(np.array([np.inf, 1.0, 1.0], np.float32), inf_e, m, "running_var", c, 0)
    assert same.passed and same.max_abs_err == 0.0
    other = compare_one(np.array([1.0, 1.0, np.inf], np.float32), inf_e, m, "running_var", c, 0)
    assert not other.passed and other.max_abs_err == np.inf and other.ratio == np.inf


def test_one_pass_variance_with_large_offset_fails_but_two_pass_passes():
    # Mean 1e4, spread 1, float32: E[x^2] - E[x]^2 cancels catastrophically.
    c = make_case([{"op": "forward", "mode": "train"}], {"momentum": 1.0},
                  dist={"mean": 1.0e4, "std": 1.0}, shape=(64, 2, 4, 4))
    c = c.model_copy(update={"input": c.input.model_copy(update={"dtype": "float32"})})

    class OnePass(NumpyBatchNorm):
        name = "one-pass variance"

        def run(self, case, arrays):
            obs = super().run(case, arrays)
            x = arrays.batches[0].astype(np.float32)
            n = x.size // x.shape[1]
            var = (x * x).mean(axis=(0, 2, 3), dtype=np.float32) - x.mean(axis=(0, 2, 3), dtype=np.float32) ** 2
            obs[(0, "running_var")] = (var * np.float32(n / (n - 1))).astype(np.float32)
            return obs

    assert run_cell(c, NumpyBatchNorm(), "1").verdict == "conforms"
    assert run_cell(c, OnePass(), "1").verdict == "fails"


def _backward_case():
    c = make_case([{"op": "forward", "mode": "train"}, {"op": "backward"}])
    return c.model_copy(update={"input": c.input.model_copy(update={"dtype": "float32"})})


def _expected_failure(observables, max_ratio=1e6):
    return entries(f"""
entries:
- id: grad-bias-bug
  kind: known_bug
  summary: grad_bias is wrong on backward cases
  source: src
  finding: findings/x.py
  where: {{has_backward: true}}
  expected_failure:
    observables: {list(observables)}
    max_ratio: {max_ratio}
    derivation: test bound, stands for a bound derived from the defect
""")


def test_unmodelled_known_bug_is_a_strict_expected_failure():
    from .numpy_bn import MutantGradBiasWrong

    bug = _expected_failure(("grad_bias",))
    r = run_cell(_backward_case(), MutantGradBiasWrong(), "1", expectations=bug)
    assert r.verdict == "known_bug" and r.divergences[0]["finding"] == "findings/x.py"
    assert r.divergences[0]["ref"] == "test.yaml#grad-bias-bug"
    fixed = run_cell(_backward_case(), NumpyBatchNorm(), "1", expectations=bug)
    assert fixed.verdict == "fails" and "no longer reproduce" in fixed.reason
    wrong_place = _expected_failure(("grad_input",))
    assert run_cell(_backward_case(), MutantGradBiasWrong(), "1", expectations=wrong_place).verdict == "fails"
    # Outside its selector the bug is not expected: forward-only case conforms.
    assert run_cell(case(), MutantGradBiasWrong(), "1", expectations=bug).verdict == "conforms"
    with pytest.raises(ExpectationError, match="exactly one of options, raises, expected_failure"):
        entries("entries: [{id: q, kind: quirk, summary: no behaviour, source: src}]")


def test_an_expected_failure_that_exceeds_its_bound_fails():
    # Issue 15, item 6: a known bug that gets worse (here: any error above 2x the tolerance) is `fails`.
    from .numpy_bn import MutantGradBiasWrong

    r = run_cell(_backward_case(), MutantGradBiasWrong(), "1", expectations=_expected_failure(("grad_bias",), 2))
    assert r.verdict == "fails" and "got worse than documented" in r.reason and "bound x2" in r.reason


def test_an_expected_failure_with_a_structural_failure_fails():
    # NaN or a missing value is not "the documented error, bounded": fails (unless declared absent).
    class NoGradBias(NumpyBatchNorm):
        name = "drops grad_bias"

        def run(self, case, arrays):
            return {k: v for k, v in super().run(case, arrays).items() if k[1] != "grad_bias"}

    r = run_cell(_backward_case(), NoGradBias(), "1", expectations=_expected_failure(("grad_bias",)))
    assert r.verdict == "fails" and "adapter returned no value" in r.reason
    absent = entries("""
entries:
- id: grad-bias-missing
  kind: known_bug
  summary: grad_bias is None
  source: src
  finding: findings/x.py
  expected_failure: {observables: [grad_bias], absent: [grad_bias], max_ratio: 2,
                     derivation: "the gradient is missing, no value to bound"}
""")
    assert run_cell(_backward_case(), NoGradBias(), "1", expectations=absent).verdict == "known_bug"


def test_a_documented_nan_is_accepted_only_on_its_observable():
    # keras3-mixed-precision-autocast-gamma-overflow: the defect's effect is NaN (inf - inf); `nan` admits it on the
    # listed observable only, and the cell must still show it (strict).
    class NanGradBias(NumpyBatchNorm):
        name = "NaN grad_bias"
        target = "grad_bias"

        def run(self, case, arrays):
            out = super().run(case, arrays)
            return {k: (np.full_like(v, np.nan) if k[1] == self.target else v) for k, v in out.items()}

    class NanGradWeight(NanGradBias):
        target = "grad_weight"

    def nan_entry(nan):
        return entries(f"""
entries:
- id: grad-bias-nan
  kind: known_bug
  summary: grad_bias is NaN
  source: src
  finding: findings/x.py
  expected_failure: {{observables: [grad_bias], nan: {nan}, max_ratio: 2,
                     derivation: "inf - inf gives NaN, no finite error to bound"}}
""")

    documented = nan_entry("[grad_bias]")
    assert run_cell(_backward_case(), NanGradBias(), "1", expectations=documented).verdict == "known_bug"
    # Without `nan` the same NaN is a structural failure: fails.
    r = run_cell(_backward_case(), NanGradBias(), "1", expectations=nan_entry("[]"))
    assert r.verdict == "fails" and "NaN where the oracle has a value" in r.reason
    # A NaN elsewhere is not documented; a cell without the NaN no longer reproduces it.
    assert run_cell(_backward_case(), NanGradWeight(), "1", expectations=documented).verdict == "fails"
    fixed = run_cell(_backward_case(), NumpyBatchNorm(), "1", expectations=documented)
    assert fixed.verdict == "fails" and "no longer reproduce" in fixed.reason
    with pytest.raises(ExpectationError, match="nan"):
        entries("""
entries:
- {id: q, kind: known_bug, summary: s, source: src, finding: f.py,
   expected_failure: {observables: [grad_bias], nan: [output], max_ratio: 2, derivation: "not among the observables"}}
""")


def test_params_overflow_selector_is_the_rounding_to_infinity_threshold():
    # IEEE round to nearest: 65519.99 stays finite in float16 (65504), 65520 is a tie that rounds to inf.
    from bnconform.expect import _CONDITIONS

    def with_weight(w, dtype="float16"):
        c = make_case([{"op": "forward", "mode": "train"}], {"num_features": 1, "init": {"weight": w}}, shape=(2, 1))
        return c.model_copy(update={"input": c.input.model_copy(update={"dtype": dtype})})

    sel = _CONDITIONS["params_overflow_dtype"]
    assert np.isinf(np.float16(65520.0)) and np.isfinite(np.float16(65519.99))
    assert sel(with_weight(65520.0), True) and sel(with_weight(-1.0e5), True)
    assert sel(with_weight(65519.99), False) and sel(with_weight(1.0e5, "float32"), False)


def test_a_documented_wrong_dtype_is_accepted_but_its_values_stay_bounded():
    class Float64Stats(NumpyBatchNorm):
        name = "returns running_mean in float64"
        offset = 0.0

        def run(self, case, arrays):
            out = super().run(case, arrays)
            return {k: (v.astype(np.float64) + self.offset if k[1] == "running_mean" else v) for k, v in out.items()}

    class Float64StatsOff(Float64Stats):
        offset = 1000.0

    bug = entries("""
entries:
- id: stats-in-float64
  kind: known_bug
  summary: running_mean comes back in float64
  source: src
  finding: findings/x.py
  expected_failure: {observables: [running_mean], wrong_dtype: [running_mean], max_ratio: 2,
                     derivation: "the values are those of the float32 computation, stored wider"}
""")
    assert run_cell(case(), Float64Stats(), "1", expectations=bug).verdict == "known_bug"
    r = run_cell(case(), Float64StatsOff(), "1", expectations=bug)
    assert r.verdict == "fails" and "got worse than documented" in r.reason
    assert run_cell(case(), Float64Stats(), "1", expectations=()).verdict == "fails"


def test_an_adapter_writing_into_its_inputs_cannot_corrupt_other_cells():
    class Vandal(NumpyBatchNorm):
        name = "writes into its input arrays"

        def run(self, case, arrays):
            out = super().run(case, arrays)
            for a in list(arrays.batches.values()) + list(arrays.init.values()):
                a[...] = 123.0
            return out

    c = case()
    assert run_cell(c, Vandal(), "1").verdict == "conforms"
    assert run_cell(c, NumpyBatchNorm(), "1").verdict == "conforms"


def test_expected_exception_is_strict():
    limitation = entries("""
entries:
- id: no-4d
  kind: quirk
  summary: 4-D input is rejected
  source: src
  where: {rank: [4]}
  raises: "RuntimeError: .*4-D"
""")

    class Rejects(NumpyBatchNorm):
        name = "rejects 4-D"

        def run(self, case, arrays):
            raise RuntimeError("cannot do 4-D input")

    class OtherError(NumpyBatchNorm):
        name = "raises something else"

        def run(self, case, arrays):
            raise TypeError("unrelated")

    r = run_cell(case(), Rejects(), "1", expectations=limitation)
    assert r.verdict == "quirk" and "cannot do 4-D" in r.reason
    accepted = run_cell(case(), NumpyBatchNorm(), "1", expectations=limitation)
    assert accepted.verdict == "fails" and "expected to raise" in accepted.reason
    assert run_cell(case(), OtherError(), "1", expectations=limitation).verdict == "error"


def _single_value_case():
    c = make_case([{"op": "forward", "mode": "train"}])
    return c.model_copy(update={"input": c.input.model_copy(update={"shape": [1, 3], "dtype": "float32"})})


def test_an_undefined_case_conforms_only_with_the_documented_rejection():
    # Issue 15, item 7: the oracle finds one value per channel undefined (no unbiased variance).
    rejection = entries("""
entries:
- id: single-value-rejected
  kind: rejection
  summary: one value per channel in training is refused
  source: src
  raises: "ValueError: Expected more than 1 value per channel"
""")

    class Rejects(NumpyBatchNorm):
        name = "rejects as documented"

        def run(self, case, arrays):
            raise ValueError("Expected more than 1 value per channel when training, got input size [1, 3]")

    class AdapterBug(NumpyBatchNorm):
        name = "adapter bug"

        def run(self, case, arrays):
            raise KeyError("adapter bug")

    c = _single_value_case()
    r = run_cell(c, Rejects(), "1", expectations=rejection)
    assert r.verdict == "conforms" and r.divergences[0]["ref"] == "test.yaml#single-value-rejected"
    r = run_cell(c, AdapterBug(), "1", expectations=rejection)
    assert r.verdict == "error" and "KeyError" in r.reason and "undocumented" in r.reason
    assert run_cell(c, Rejects(), "1", expectations=()).verdict == "error"  # no documented rejection at all
