"""Keras 2 -> 3 migration: the same training step through tf-keras'
``BatchNormalization(fused=True)`` and Keras 3's ``BatchNormalization`` (on
TensorFlow) must be reported as a BEHAVIOUR DIFFERENCE in ``running_var``:
tf-keras' fused kernel feeds the unbiased batch variance into the moving
variance (canonical: ``conforms``), Keras 3 the biased one (``quirk``
``keras3-biased-moving-variance``). Outputs agree; only the running variance
moves by the factor m/(m-1).

Needs tensorflow, keras 3 and tf_keras in one environment (tox ``tf-keras``);
skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest

from bnconform.catalogue import load_catalogue

_MISSING = [m for m in ("tensorflow", "keras", "tf_keras") if importlib.util.find_spec(m) is None]
if _MISSING and os.environ.get("BNCONFORM_REQUIRE_FRAMEWORKS") == "1":  # set by tox -e tf-keras: never skip there
    raise ImportError(f"the Keras migration test needs {', '.join(_MISSING)} in this env")
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)} (tox env tf-keras): not importable here")

CASE = "train-1step-m0.1"  # (4, 3, 5, 5) NCHW, one training forward, momentum 0.1: m = 100 values per channel


@pytest.fixture(scope="module")
def records():
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != "tensorflow":
            pytest.skip(f"keras already imported with the {keras.backend.backend()!r} backend in this process")
    elif os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        pytest.skip(f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}: this test needs Keras 3 on TensorFlow")
    from adapters.keras3 import BatchNormalizationTF
    from adapters.tf_keras import BatchNormalizationFused
    from bnconform.engine import run_cell

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    case = load_catalogue(root=root).by_id()[CASE]
    return {"tf_keras": run_cell(case, BatchNormalizationFused()), "keras3": run_cell(case, BatchNormalizationTF())}


def _by_observable(comparisons: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in comparisons:
        out.setdefault(c["observable"], []).append(c)
    return out


def test_tf_keras_fused_conforms(records):
    rec = records["tf_keras"]
    assert rec.verdict == "conforms", rec.reason
    assert rec.framework == "tf_keras" and not rec.divergences


def test_keras3_is_a_quirk_with_biased_running_var(records):
    rec = records["keras3"]
    assert rec.verdict == "quirk", rec.reason
    assert [d["id"] for d in rec.divergences] == ["keras3-biased-moving-variance"]
    assert rec.divergences[0]["options"] == {"running_var_correction": "biased"}
    # Judged against the biased-variance oracle: everything passes ...
    assert all(c["passed"] for c in rec.comparisons)
    # ... and against the canonical oracle exactly the running variance fails; the output agrees.
    canonical = _by_observable(rec.canonical_comparisons)
    assert not any(c["passed"] for c in canonical["running_var"])
    assert all(c["passed"] for c in canonical["output"]) and all(c["passed"] for c in canonical["running_mean"])


def test_running_var_divergence_is_the_bessel_factor(records):
    """The two running variances differ by momentum * (m/(m-1) - 1) * batch variance: Bessel's correction."""
    fused = _by_observable(records["tf_keras"].comparisons)["running_var"][0]
    keras3 = _by_observable(records["keras3"].comparisons)["running_var"][0]
    old, new = np.asarray(fused["actual"]), np.asarray(keras3["actual"])
    m, momentum = 100, 0.1
    # running = (1 - momentum) * 1 + momentum * v: recover the batch variance v from each.
    v_unbiased, v_biased = (old - (1 - momentum)) / momentum, (new - (1 - momentum)) / momentum
    np.testing.assert_allclose(v_unbiased / v_biased, m / (m - 1), rtol=1e-4)


def test_gate_reports_the_migration_as_a_behaviour_change(records):
    """``bnconform gate --map-adapter``: tf-keras fused as the baseline of Keras 3."""
    from bnconform.gate import evaluate, rename_adapters
    from bnconform.resultset import merge

    baseline = rename_adapters(merge([records["tf_keras"]]), {records["tf_keras"].adapter: records["keras3"].adapter})
    result = evaluate(merge([records["keras3"]]), baseline=baseline)
    assert not result.passed
    changed = [p for p in result.problems if p.startswith("behaviour changed")]
    assert len(changed) == 1 and CASE in changed[0] and "quirk" in changed[0], result.text()
    # Accepting the new behaviour = re-baselining on it: the same gate then passes.
    assert evaluate(merge([records["keras3"]]), baseline=merge([records["keras3"]])).passed
