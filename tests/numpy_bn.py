"""A plain NumPy BatchNorm written as a bnconform plug-in adapter, plus mutants.

``NumpyBatchNorm`` computes in the storage dtype (float32 for float32 cases),
independently of the oracle (no import from ``bnconform.oracle``): it is the
example plug-in of the README and the control of the power tests.

Each ``Mutant*`` class injects one classic BatchNorm bug. The suite's power
tests run the real catalogue through each and require at least one ``fails``
cell: if a mutant slips through, the catalogue or the tolerance is too weak.
"""

from __future__ import annotations

import numpy as np

from bnconform.adapter import Adapter
from bnconform.catalogue import OBSERVABLES, Backward, Forward, SgdStep


class NumpyBatchNorm(Adapter):
    """Reference-style BatchNorm in NumPy, (N, C, *) or any channel axis."""

    name = "numpy-reference"
    framework = "numpy"
    expectations = "data/expectations/numpy_bn.yaml"  # its documented rejection of undefined cases

    # Bug switches (all off here; the mutants flip one each).
    running_var_biased = False
    momentum_is_decay = False
    eps_outside_sqrt = False
    update_running_stats = True
    normalise_with_unbiased = False
    eval_uses_batch_stats = False
    global_stats_grad_has_batch_terms = False
    count_batches = True
    update_frozen = False
    grad_bias_sums_output = False
    #: "two_pass" (the control), "one_pass" (E[x^2] - E[x]^2 in the parameter
    #: dtype) or "one_pass_clamped" (max(., 0)): the precision variants.
    variance_algorithm = "two_pass"
    #: Empty-batch behaviour of the running update: "skip", "nan" or "zero".
    empty_batch_update = "skip"

    observables = frozenset(OBSERVABLES)

    def run(self, case, arrays):
        L, axis = case.layer, case.input.axis
        ndim = len(case.input.shape)
        axes = tuple(a for a in range(ndim) if a != axis)
        pdt = np.dtype(arrays.param_dtype)
        xdt = np.float32 if case.input.dtype == "bfloat16" else np.dtype(case.input.dtype)

        def cv(v):
            shape = [1] * ndim
            shape[axis] = -1
            return v.reshape(shape)

        rm = arrays.init["running_mean"].astype(pdt).copy()
        rv = arrays.init["running_var"].astype(pdt).copy()
        w = arrays.init["weight"].astype(pdt).copy() if L.affine else np.ones(L.num_features, pdt)
        b = arrays.init["bias"].astype(pdt).copy() if L.affine else np.zeros(L.num_features, pdt)
        nbt = 0
        obs, cache, grads = {}, None, {}
        for i, step in enumerate(case.steps):
            if isinstance(step, Forward):
                x = arrays.batches[step.batch].astype(pdt)
                n = x.size // x.shape[axis]
                batch = step.mode == "train" or not L.track_running_stats or self.eval_uses_batch_stats
                if batch:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        mean = x.mean(axis=axes) if n else np.full(x.shape[axis], np.nan, pdt)
                        if self.variance_algorithm == "two_pass" or not n:
                            var = ((x - cv(mean)) ** 2).mean(axis=axes) if n else mean
                        else:  # one pass in the parameter dtype, summed like a SIMD CPU loop
                            # (8 sequential lanes, then the lanes): an order unlike the oracle's
                            lanes = lambda v: np.cumsum(  # noqa: E731
                                np.pad(np.moveaxis(v, axis, 0).reshape(v.shape[axis], -1),
                                       ((0, 0), (0, -n % 8))).reshape(v.shape[axis], -1, 8),
                                axis=1, dtype=pdt)[:, -1].sum(axis=1, dtype=pdt)
                            mean = (lanes(x) / pdt.type(n)).astype(pdt)
                            var = (lanes(x * x) / pdt.type(n) - mean * mean).astype(pdt)
                            if self.variance_algorithm == "one_pass_clamped":
                                var = np.maximum(var, 0).astype(pdt)
                    if step.mode == "train" and L.track_running_stats and self.update_running_stats:
                        if self.count_batches:
                            nbt += 1
                        if L.momentum is None:
                            f = 1.0 / max(nbt, 1)
                        else:
                            f = (1.0 - L.momentum) if self.momentum_is_decay else L.momentum
                        if n == 1 and not self.running_var_biased:
                            raise ValueError("unbiased variance of one value")
                        if n == 0 and self.empty_batch_update != "skip":
                            fill = np.nan if self.empty_batch_update == "nan" else 0.0
                            rm = ((1 - f) * rm + f * fill).astype(pdt)
                            rv = ((1 - f) * rv + f * fill).astype(pdt)
                        if n > 0:  # an empty batch has nothing to average in
                            pop = var if self.running_var_biased else var * (n / (n - 1))
                            rm = ((1 - f) * rm + f * mean).astype(pdt)
                            rv = ((1 - f) * rv + f * pop).astype(pdt)
                    norm_var = var * (n / (n - 1)) if self.normalise_with_unbiased else var
                else:
                    mean, norm_var = rm, rv
                with np.errstate(invalid="ignore"):  # a one-pass variance may be negative: NaN, as in a framework
                    denom = (np.sqrt(norm_var) + L.eps) if self.eps_outside_sqrt else np.sqrt(norm_var + L.eps)
                x_hat = (x - cv(mean)) / cv(denom)
                y = x_hat * cv(w) + cv(b)
                cache = (x_hat, denom, batch or self.global_stats_grad_has_batch_terms)
                obs[(i, "output")] = y.astype(xdt)
            elif isinstance(step, Backward):
                x_hat, denom, used_batch = cache
                g = arrays.grad_outputs[i].astype(pdt)
                dxh = g * cv(w)
                if used_batch:
                    dx = (dxh - dxh.mean(axis=axes, keepdims=True)
                          - x_hat * (dxh * x_hat).mean(axis=axes, keepdims=True)) / cv(denom)
                else:
                    dx = dxh / cv(denom)
                grads = {"weight": (g * x_hat).sum(axis=axes).astype(pdt),
                         "bias": (x_hat if self.grad_bias_sums_output else g).sum(axis=axes).astype(pdt)}
                obs[(i, "grad_input")] = dx.astype(xdt)
                if L.affine:
                    for name, v in grads.items():
                        if name not in L.frozen:
                            obs[(i, f"grad_{name}")] = v
            elif isinstance(step, SgdStep) and L.affine:
                if "weight" not in L.frozen or self.update_frozen:
                    w = (w - step.lr * grads["weight"]).astype(pdt)
                if "bias" not in L.frozen or self.update_frozen:
                    b = (b - step.lr * grads["bias"]).astype(pdt)
            if L.track_running_stats:
                obs[(i, "running_mean")] = rm.copy()
                obs[(i, "running_var")] = rv.copy()
                obs[(i, "num_batches_tracked")] = np.asarray(nbt, dtype=np.int64)
            if L.affine:
                obs[(i, "weight")] = w.copy()
                obs[(i, "bias")] = b.copy()
        return obs


class MutantBiasedRunningVar(NumpyBatchNorm):
    name, running_var_biased = "mutant: biased running_var", True


class MutantMomentumFlipped(NumpyBatchNorm):
    name, momentum_is_decay = "mutant: momentum read as decay", True


class MutantEpsOutsideSqrt(NumpyBatchNorm):
    name, eps_outside_sqrt = "mutant: eps outside sqrt", True


class MutantStatsNotUpdated(NumpyBatchNorm):
    name, update_running_stats = "mutant: running stats not updated", False


class MutantNormaliseWithUnbiased(NumpyBatchNorm):
    name, normalise_with_unbiased = "mutant: normalise with unbiased variance", True


class MutantEvalUsesBatchStats(NumpyBatchNorm):
    name, eval_uses_batch_stats = "mutant: eval uses batch stats", True


class MutantGlobalStatsGradBatchTerms(NumpyBatchNorm):
    name, global_stats_grad_has_batch_terms = "mutant: global-stats grad with batch terms", True


class MutantCounterFrozen(NumpyBatchNorm):
    name, count_batches = "mutant: num_batches_tracked not incremented", False


class MutantUpdatesFrozen(NumpyBatchNorm):
    name, update_frozen = "mutant: SGD updates frozen parameters", True


class MutantGradBiasWrong(NumpyBatchNorm):
    name, grad_bias_sums_output = "mutant: grad_bias sums x_hat", True


MUTANTS = [MutantBiasedRunningVar, MutantMomentumFlipped, MutantEpsOutsideSqrt, MutantStatsNotUpdated,
           MutantNormaliseWithUnbiased, MutantEvalUsesBatchStats, MutantGlobalStatsGradBatchTerms,
           MutantCounterFrozen, MutantUpdatesFrozen, MutantGradBiasWrong]


class RaisingAdapter(NumpyBatchNorm):
    """A plug-in whose run raises: the cell must be ``error``, the rest of the matrix completes."""

    name = "plugin: raises"

    def run(self, case, arrays):
        raise RuntimeError("boom <script>alert(1)</script>")


class WrongShapeAdapter(NumpyBatchNorm):
    """A plug-in that returns a transposed output: the cell must be ``fails``."""

    name = "plugin: wrong shape"

    def run(self, case, arrays):
        obs = super().run(case, arrays)
        return {k: (v.reshape(-1) if k[1] == "output" else v) for k, v in obs.items()}


class AbortingAdapter(NumpyBatchNorm):
    """A 'framework' that kills its process on one case (simulates a segfault)."""

    name = "plugin: aborts"

    def run(self, case, arrays):
        if case.id == "train-1step-m0.5":
            import os

            os.abort()
        return super().run(case, arrays)


class HangingAdapter(NumpyBatchNorm):
    """A 'framework' that hangs on one case."""

    name = "plugin: hangs"

    def run(self, case, arrays):
        if case.id == "train-1step-m0.5":
            import time

            time.sleep(600)
        return super().run(case, arrays)


class NoDeviceAdapter(NumpyBatchNorm):
    """An adapter for a device this machine lacks (as a CUDA row on a CPU machine)."""

    name, device = "plugin: needs a device", "npu"

    def available(self):
        return "no NPU on this machine"
