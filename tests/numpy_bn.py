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
from bnconform.catalogue import OBSERVABLES


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
    #: Replica cases (synchronized BN): whether the variance is all-reduced
    #: (False: each replica normalises with its own variance about the global
    #: mean) and which count Bessel's correction uses ("global" or "replica").
    sync_variance = True
    bessel_count = "global"

    #: Replica cases run as R NumPy "replicas" whose partial sums are summed
    #: (the all-reduce), each keeping its own copy of the state.
    runs_replicas = True

    observables = frozenset(OBSERVABLES)
    blocks = frozenset({"conv", "linear"})

    @staticmethod
    def _pre(cell, x):
        """A composite case's conv / linear in the storage dtype, by shifted
        slices (not the oracle's windowed einsum): stride 1, 'same' zero padding."""
        pre, w = cell.case.pre, cell.arrays.pre["weight"].astype(x.dtype)
        if pre.kind == "linear":
            z = x @ w.T
        else:
            k = w.shape[2:]
            xp = np.pad(x, [(0, 0), (0, 0)] + [((kk - 1) // 2,) * 2 for kk in k])
            z = np.zeros((x.shape[0], w.shape[0], *x.shape[2:]), dtype=x.dtype)
            for off in np.ndindex(*k):
                sl = (slice(None), slice(None)) + tuple(slice(o, o + n) for o, n in zip(off, x.shape[2:]))
                z += np.tensordot(xp[sl], w[(slice(None), slice(None)) + off], axes=([1], [1])).transpose(
                    0, x.ndim - 1, *range(1, x.ndim - 1)).astype(x.dtype)
        if "bias" in cell.arrays.pre:
            z = z + cell.arrays.pre["bias"].astype(x.dtype).reshape([1, -1] + [1] * (x.ndim - 2))
        return z

    # Hooks of the step interpreter (bnconform.drive): the layer state lives on the cell.
    def build(self, cell):
        case = cell.case
        cell.pdt = np.dtype(cell.param_dtype)
        cell.xdt = np.float32 if case.input.dtype == "bfloat16" else np.dtype(case.input.dtype)
        cell.axes = tuple(a for a in range(len(case.input.shape)) if a != case.input.axis)
        cell.rm, cell.rv = cell.init("running_mean"), cell.init("running_var")
        cell.w, cell.b = cell.init("weight"), cell.init("bias")
        cell.nbt, cell.cache, cell.grads = 0, None, {}
        if case.replicas is not None:  # one copy of the state per replica
            R = len(case.replicas)
            cell.rm, cell.rv, cell.w, cell.b = (np.stack([v] * R) for v in (cell.rm, cell.rv, cell.w, cell.b))
            cell.nbt = np.zeros(R, dtype=np.int64)

    @staticmethod
    def _cv(cell, v):
        shape = [1] * len(cell.case.input.shape)
        shape[cell.case.input.axis] = -1
        return v.reshape(shape)

    def forward(self, cell, x, mode):
        if cell.case.replicas is not None:
            return self._forward_replicas(cell, x, mode)
        L, pdt, axis, cv = cell.case.layer, cell.pdt, cell.case.input.axis, lambda v: self._cv(cell, v)
        x = x.astype(pdt)
        if cell.case.pre is not None:
            x = self._pre(cell, x)
        n = x.size // x.shape[axis]
        batch = mode == "train" or not L.track_running_stats or self.eval_uses_batch_stats
        if batch:
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = x.mean(axis=cell.axes) if n else np.full(x.shape[axis], np.nan, pdt)
                if self.variance_algorithm == "two_pass" or not n:
                    var = ((x - cv(mean)) ** 2).mean(axis=cell.axes) if n else mean
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
            if mode == "train" and L.track_running_stats and self.update_running_stats:
                if self.count_batches:
                    cell.nbt += 1
                if L.momentum is None:
                    f = 1.0 / max(cell.nbt, 1)
                else:
                    f = (1.0 - L.momentum) if self.momentum_is_decay else L.momentum
                if n == 1 and not self.running_var_biased:
                    raise ValueError("unbiased variance of one value")
                if n == 0 and self.empty_batch_update != "skip":
                    fill = np.nan if self.empty_batch_update == "nan" else 0.0
                    cell.rm = ((1 - f) * cell.rm + f * fill).astype(pdt)
                    cell.rv = ((1 - f) * cell.rv + f * fill).astype(pdt)
                if n > 0:  # an empty batch has nothing to average in
                    pop = var if self.running_var_biased else var * (n / (n - 1))
                    cell.rm = ((1 - f) * cell.rm + f * mean).astype(pdt)
                    cell.rv = ((1 - f) * cell.rv + f * pop).astype(pdt)
            if self.normalise_with_unbiased:  # n = 1: inf * 0 = NaN, as a framework computing it would (not a crash)
                with np.errstate(divide="ignore", invalid="ignore"):
                    norm_var = var * (n / np.float64(n - 1))
            else:
                norm_var = var
        else:
            mean, norm_var = cell.rm, cell.rv
        with np.errstate(invalid="ignore"):  # a one-pass variance may be negative: NaN, as in a framework
            denom = (np.sqrt(norm_var) + L.eps) if self.eps_outside_sqrt else np.sqrt(norm_var + L.eps)
        x_hat = (x - cv(mean)) / cv(denom)
        cell.cache = (x_hat, denom, batch or self.global_stats_grad_has_batch_terms)
        return (x_hat * cv(cell.w) + cv(cell.b)).astype(cell.xdt)

    def _forward_replicas(self, cell, x, mode):
        """Synchronized BN: replica r sees only its rows; the sums are all-reduced
        (summed) across replicas: two reductions, the global mean first, then the
        squared deviations from it (or x and x^2 together for a one-pass variance)."""
        L, pdt, case = cell.case.layer, cell.pdt, cell.case
        cv = lambda v: self._cv(cell, v)  # noqa: E731
        xs = [x[sl].astype(pdt) for sl in case.replica_slices]
        per_row = x[:1].size // x.shape[case.input.axis] if x.shape[0] else 0
        counts = [xr.shape[0] * per_row for xr in xs]
        n = sum(counts)
        batch = mode == "train" or not L.track_running_stats or self.eval_uses_batch_stats
        R = len(xs)
        if batch:
            mean = (sum(xr.sum(axis=cell.axes) for xr in xs) / pdt.type(n)).astype(pdt)
            if self.variance_algorithm == "two_pass":
                sq = [((xr - cv(mean)) ** 2).sum(axis=cell.axes) for xr in xs]
            else:  # E[x^2] - E[x]^2 from all-reduced sums (Keras _compute_moments_sync)
                s2 = (sum((xr * xr).sum(axis=cell.axes) for xr in xs) / pdt.type(n)).astype(pdt)
                v = (s2 - mean * mean).astype(pdt)
                if self.variance_algorithm == "one_pass_clamped":
                    v = np.maximum(v, 0).astype(pdt)
                sq = [v * c for c in counts]
            with np.errstate(invalid="ignore", divide="ignore"):
                if self.sync_variance:
                    var = [(sum(sq) / pdt.type(n)).astype(pdt)] * R
                else:  # mutant: each replica's own variance (about the global mean)
                    var = [(q / pdt.type(c)).astype(pdt) for q, c in zip(sq, counts)]
            if mode == "train" and L.track_running_stats and self.update_running_stats:
                if self.count_batches:
                    cell.nbt = cell.nbt + 1
                for r in range(R):
                    if L.momentum is None:
                        f = 1.0 / max(int(cell.nbt[r]), 1)
                    else:
                        f = L.momentum if not self.momentum_is_decay else 1.0 - L.momentum
                    k = n if self.bessel_count == "global" else counts[r]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        pop = var[r] if self.running_var_biased else var[r] * (np.float64(k) / np.float64(k - 1))
                    cell.rm[r] = ((1 - f) * cell.rm[r] + f * mean).astype(pdt)
                    cell.rv[r] = ((1 - f) * cell.rv[r] + f * pop).astype(pdt)
            means, norm_vars = [mean] * R, var
        else:
            means, norm_vars = list(cell.rm), list(cell.rv)
        outs, cache = [], []
        for r, xr in enumerate(xs):
            with np.errstate(invalid="ignore"):
                denom = np.sqrt(norm_vars[r] + L.eps)
            x_hat = (xr - cv(means[r])) / cv(denom)
            cache.append((x_hat, denom))
            outs.append((x_hat * cv(cell.w[r]) + cv(cell.b[r])).astype(cell.xdt))
        cell.cache = (cache, batch, n)
        return np.concatenate(outs, axis=0)

    def _backward_replicas(self, cell, grad_output):
        """Per-replica partial sums of dy and dy x_hat, all-reduced (summed); the
        parameter gradients are all-reduced too (the global loss's gradient)."""
        cache, used_batch, n = cell.cache
        pdt, axes, cv = cell.pdt, cell.axes, lambda v: self._cv(cell, v)
        gs = [grad_output[sl].astype(pdt) for sl in cell.case.replica_slices]
        dxh = [g * cv(cell.w[r]) for r, g in enumerate(gs)]
        s1 = sum(d.sum(axis=axes) for d in dxh)
        s2 = sum((d * xh).sum(axis=axes) for d, (xh, _) in zip(dxh, cache))
        dx = []
        for d, (x_hat, denom) in zip(dxh, cache):
            if used_batch:
                dx.append((d - cv(s1 / pdt.type(n)) - x_hat * cv(s2 / pdt.type(n))) / cv(denom))
            else:
                dx.append(d / cv(denom))
        cell.grads = {"weight": sum((g * xh).sum(axis=axes) for g, (xh, _) in zip(gs, cache)).astype(pdt),
                      "bias": sum(g.sum(axis=axes) for g in gs).astype(pdt)}
        return np.concatenate(dx, axis=0).astype(cell.xdt), cell.grads

    def backward(self, cell, grad_output, retain):
        if cell.case.replicas is not None:
            return self._backward_replicas(cell, grad_output)
        x_hat, denom, used_batch = cell.cache
        pdt, axes, cv = cell.pdt, cell.axes, lambda v: self._cv(cell, v)
        g = grad_output.astype(pdt)
        dxh = g * cv(cell.w)
        if used_batch:
            dx = (dxh - dxh.mean(axis=axes, keepdims=True)
                  - x_hat * (dxh * x_hat).mean(axis=axes, keepdims=True)) / cv(denom)
        else:
            dx = dxh / cv(denom)
        cell.grads = {"weight": (g * x_hat).sum(axis=axes).astype(pdt),
                      "bias": (x_hat if self.grad_bias_sums_output else g).sum(axis=axes).astype(pdt)}
        return dx.astype(cell.xdt), cell.grads

    def sgd_step(self, cell, lr):  # replica cases: every replica's row, with the all-reduced gradient
        if "weight" in cell.trainable or self.update_frozen:
            cell.w = (cell.w - lr * cell.grads["weight"]).astype(cell.pdt)
        if "bias" in cell.trainable or self.update_frozen:
            cell.b = (cell.b - lr * cell.grads["bias"]).astype(cell.pdt)

    def state(self, cell):
        return {"running_mean": cell.rm, "running_var": cell.rv,
                "num_batches_tracked": np.asarray(cell.nbt, dtype=np.int64), "weight": cell.w, "bias": cell.b}


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


def _half_lanes_sum(v: np.ndarray, axes: tuple[int, ...], axis: int) -> np.ndarray:
    """Per-channel sum of ``v`` over ``axes`` ACCUMULATED IN FLOAT16, the way a
    vectorised CPU loop with half-precision accumulators does it: 8 lanes, each
    summing its values sequentially (``np.add.accumulate`` rounds every partial
    sum to float16; ``np.sum`` would not: NumPy's half reductions accumulate in
    float32), then the 8 lanes. Returns float16 of shape (C,); inf once a
    partial sum passes 65504."""
    c = v.shape[axis]
    flat = np.moveaxis(v.astype(np.float16), axis, 0).reshape(c, -1)
    flat = np.pad(flat, ((0, 0), (0, -flat.shape[1] % 8))).reshape(c, -1, 8)
    with np.errstate(over="ignore", invalid="ignore"):
        lanes = np.add.accumulate(flat, axis=1, dtype=np.float16)[:, -1]
        return np.add.accumulate(lanes, axis=1, dtype=np.float16)[:, -1]


class MutantHalfAccumulation(NumpyBatchNorm):
    """Float16 cases: every per-channel reduction (mean, variance, the two
    backward sums, grad_weight, grad_bias) accumulates in float16 (8 sequential
    lanes, :func:`_half_lanes_sum`) instead of float32. Its expectations file
    declares it (``accumulation_dtype: input``, a modelled envelope that grows
    like sqrt(m)): within that envelope on small reductions, while at real
    network sizes the float16 partial sums stagnate (a value below half an ulp
    of the partial sum is lost) and overflow to inf — fails."""

    name = "mutant: float16 accumulation"
    expectations = "data/expectations/numpy_bn_half_accumulation.yaml"

    def _mean(self, cell, v):
        n = v.size // v.shape[cell.case.input.axis]
        s = _half_lanes_sum(v, cell.axes, cell.case.input.axis)
        with np.errstate(over="ignore", invalid="ignore"):
            return (s.astype(np.float32) / np.float32(n)).astype(cell.pdt)

    def forward(self, cell, x, mode):
        if cell.case.input.dtype != "float16":
            return super().forward(cell, x, mode)
        L, pdt, axis, cv = cell.case.layer, cell.pdt, cell.case.input.axis, lambda v: self._cv(cell, v)
        x = x.astype(pdt)
        n = x.size // x.shape[axis]
        if mode == "train" or not L.track_running_stats:
            with np.errstate(over="ignore", invalid="ignore"):
                mean = self._mean(cell, x)
                var = self._mean(cell, (x - cv(mean)) ** 2)
            if mode == "train" and L.track_running_stats:
                cell.nbt += 1
                f = 1.0 / max(cell.nbt, 1) if L.momentum is None else L.momentum
                if n > 1:
                    cell.rm = ((1 - f) * cell.rm + f * mean).astype(pdt)
                    cell.rv = ((1 - f) * cell.rv + f * var * (n / (n - 1))).astype(pdt)
            used_batch = True
        else:
            mean, var, used_batch = cell.rm, cell.rv, False
        with np.errstate(invalid="ignore"):
            denom = np.sqrt(var + L.eps)
            x_hat = (x - cv(mean)) / cv(denom)
        cell.cache = (x_hat, denom, used_batch)
        return (x_hat * cv(cell.w) + cv(cell.b)).astype(cell.xdt)

    def backward(self, cell, grad_output, retain):
        if cell.case.input.dtype != "float16":
            return super().backward(cell, grad_output, retain)
        x_hat, denom, used_batch = cell.cache
        pdt, axes, axis, cv = cell.pdt, cell.axes, cell.case.input.axis, lambda v: self._cv(cell, v)
        g = grad_output.astype(pdt)
        dxh = g * cv(cell.w)
        with np.errstate(over="ignore", invalid="ignore"):
            if used_batch:
                dx = (dxh - cv(self._mean(cell, dxh)) - x_hat * cv(self._mean(cell, dxh * x_hat))) / cv(denom)
            else:
                dx = dxh / cv(denom)
            cell.grads = {"weight": _half_lanes_sum(g * x_hat, axes, axis).astype(pdt),
                          "bias": _half_lanes_sum(g, axes, axis).astype(pdt)}
        return dx.astype(cell.xdt), cell.grads


class MutantSyncMeanOnly(NumpyBatchNorm):
    """Synchronized BN that all-reduces only the mean: each replica's variance is local."""

    name, sync_variance = "mutant: synchronized mean, local variance", False


class MutantBesselReplicaCount(NumpyBatchNorm):
    """Synchronized BN whose running variance uses the per-replica count in Bessel's correction."""

    name, bessel_count = "mutant: Bessel's correction with the per-replica count", "replica"


#: Mutants of synchronized BN: only replica cases can catch them.
REPLICA_MUTANTS = [MutantSyncMeanOnly, MutantBesselReplicaCount]

MUTANTS = [MutantBiasedRunningVar, MutantMomentumFlipped, MutantEpsOutsideSqrt, MutantStatsNotUpdated,
           MutantNormaliseWithUnbiased, MutantEvalUsesBatchStats, MutantGlobalStatsGradBatchTerms,
           MutantCounterFrozen, MutantUpdatesFrozen, MutantGradBiasWrong] + REPLICA_MUTANTS


class RaisingAdapter(NumpyBatchNorm):
    """A plug-in whose run raises: the cell must be ``error``, the rest of the matrix completes."""

    name = "plugin: raises"

    def build(self, cell):
        raise RuntimeError("boom <script>alert(1)</script>")


class WrongShapeAdapter(NumpyBatchNorm):
    """A plug-in that returns a transposed output: the cell must be ``fails``."""

    name = "plugin: wrong shape"

    def forward(self, cell, x, mode):
        return super().forward(cell, x, mode).reshape(-1)


class AbortingAdapter(NumpyBatchNorm):
    """A 'framework' that kills its process on one case (simulates a segfault)."""

    name = "plugin: aborts"

    def build(self, cell):
        if cell.case.id == "train-1step-m0.5":
            import os

            os.abort()
        super().build(cell)


class HangingAdapter(NumpyBatchNorm):
    """A 'framework' that hangs on one case."""

    name = "plugin: hangs"

    def build(self, cell):
        if cell.case.id == "train-1step-m0.5":
            import time

            time.sleep(600)
        super().build(cell)


class NoDeviceAdapter(NumpyBatchNorm):
    """An adapter for a device this machine lacks (as a CUDA row on a CPU machine)."""

    name, device = "plugin: needs a device", "npu"

    def available(self):
        return "no NPU on this machine"
