"""The float64 NumPy oracle: what BatchNorm should do, independent of any framework.

Canonical semantics: Ioffe & Szegedy 2015, "Batch Normalization: Accelerating
Deep Network Training by Reducing Internal Covariate Shift",
arXiv:1502.03167 —

* Alg. 1: in training, normalise with the mini-batch mean and the BIASED
  mini-batch variance ``sigma_B^2 = 1/m sum (x - mu_B)^2``, then ``y = gamma *
  x_hat + beta`` with ``x_hat = (x - mu_B) / sqrt(sigma_B^2 + eps)``.
* Alg. 2, step 10: the population variance is estimated with the UNBIASED
  estimate ``m / (m - 1) * E[sigma_B^2]`` (Bessel's correction); the canonical
  profile therefore feeds ``m/(m-1) * sigma_B^2`` into the running-variance
  moving average.
* Sec. 3, gradients: dL/dx, dL/dgamma, dL/dbeta of Alg. 1 (implemented in
  :func:`backward_batch_stats`).

Every function here is pure, float64, and shape-generic: ``x`` has shape
``(N, C, *)`` or any layout with the channel at ``axis``; per-channel vectors
have shape ``(C,)``.

Alongside each expected value the oracle returns a MAGNITUDE array: the value
of the same computation with every term replaced by its absolute value (a
running error analysis, Higham 2002, "Accuracy and Stability of Numerical
Algorithms", ch. 3). :mod:`bnconform.compare` scales tolerances by it, so that
an ill-conditioned case (large mean offset, tiny spread) is judged against the
error a numerically STABLE algorithm would make — and no more.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from .arrays import CaseArrays
from .catalogue import Backward, Case, Forward, SgdStep


class OracleUndefined(ValueError):
    """The canonical semantics are undefined for this case/profile (e.g. the
    unbiased variance of a single value per channel, or ``momentum=None`` in a
    profile without a cumulative average)."""


@dataclass(frozen=True)
class Profile:
    """Convention knobs in which frameworks legitimately differ.

    ``running_var_correction``: variance fed into the running-variance update.
        ``"unbiased"`` (paper Alg. 2; PyTorch ``aten/src/ATen/native/Normalization.cpp``)
        or ``"biased"`` (Keras 3, MXNet, Flax, ONNX).
    ``update_at``: when running statistics are updated in a training step:
        ``"forward"`` (PyTorch, Keras) or ``"backward"`` (MXNet CPU,
        ``src/operator/nn/batch_norm.cc``: the update runs in BatchNormBackward).
    ``cumulative_average``: ``momentum=None`` means the cumulative moving
        average with factor ``1/num_batches_tracked`` (PyTorch
        ``torch/nn/modules/batchnorm.py``); ``False`` makes such cases undefined.
    ``eps_dtype``: precision in which ``eps`` reaches the kernel:
        ``"float64"`` (as given) or ``"float32"`` (ONNX's ``epsilon`` is a
        32-bit FLOAT attribute, ``onnx/defs/nn/defs.cc``; visible in float64 cases).
    ``momentum_dtype``: how the momentum is stored: ``"float64"`` (as given),
        ``"float32"`` (the new-batch weight m rounded to float32) or
        ``"float32_decay"`` (the DECAY 1 - m stored as float32, as ONNX and
        Paddle do: the effective weight is ``1 - fl32(1 - m)``).
    ``fixed_gamma``: gamma is treated as 1 in forward and backward and its
        gradient is 0 whatever value it holds (MXNet's default ``fix_gamma=True``,
        ``src/operator/nn/batch_norm.cc``).
    ``train_statistics``: what a ``train``-mode forward normalises with:
        ``"batch"`` (the paper) or ``"running"`` — the layer behaves as in
        inference even in training mode and updates nothing (Keras
        ``trainable=False`` since TF 2.0; an exported inference graph).
    """

    name: str = "canonical"
    running_var_correction: Literal["unbiased", "biased"] = "unbiased"
    update_at: Literal["forward", "backward", "each_backward"] = "forward"
    cumulative_average: bool = True
    train_statistics: Literal["batch", "running"] = "batch"
    eps_dtype: Literal["float64", "float32"] = "float64"
    momentum_dtype: Literal["float64", "float32", "float32_decay"] = "float64"
    fixed_gamma: bool = False

    def with_options(self, name: str, **options) -> "Profile":
        """A copy with ``options`` applied; raises ``TypeError`` for unknown knobs."""
        return replace(self, name=name, **options)

    def options(self) -> dict:
        """The knobs that differ from the canonical profile."""
        base = CANONICAL
        return {k: getattr(self, k)
                for k in ("running_var_correction", "update_at", "cumulative_average", "train_statistics",
                          "eps_dtype", "momentum_dtype", "fixed_gamma")
                if getattr(self, k) != getattr(base, k)}


CANONICAL = Profile()


# ---------------------------------------------------------------- primitives

def reduce_axes(ndim: int, axis: int) -> tuple[int, ...]:
    """Axes reduced by BN: every axis except the channel axis."""
    return tuple(i for i in range(ndim) if i != axis % ndim)


def channel_view(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape a (C,) vector to broadcast against an ``ndim`` array along ``axis``."""
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return np.asarray(v, dtype=np.float64).reshape(shape)


def batch_stats(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and BIASED variance (ddof=0) of ``x``; both (C,), float64.

    Two-pass (mean first, then mean of squared deviations): the numerically
    stable reference. Paper Alg. 1, lines 1-2.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim, axis)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty batch: NaN statistics, by design
        mean = x.mean(axis=axes)
        var = ((x - channel_view(mean, x.ndim, axis)) ** 2).mean(axis=axes)
    return mean, var


def normalize(x, mean, var, eps, weight, bias, axis) -> np.ndarray:
    """``y = weight * (x - mean) / sqrt(var + eps) + bias``, per channel. Paper Alg. 1, lines 3-4."""
    x = np.asarray(x, dtype=np.float64)
    cv = lambda v: channel_view(v, x.ndim, axis)  # noqa: E731
    return (x - cv(mean)) / np.sqrt(cv(var) + eps) * cv(weight) + cv(bias)


def population_variance(var_biased: np.ndarray, m: int, correction: str) -> np.ndarray:
    """Variance fed into the running-variance update.

    ``"unbiased"``: Bessel's correction ``m/(m-1) * var`` (paper Alg. 2).
    Raises :class:`OracleUndefined` for m <= 1 (no unbiased estimate exists).
    """
    if correction == "biased":
        return var_biased
    if m <= 1:
        raise OracleUndefined(f"unbiased variance of m={m} value(s) per channel is undefined")
    return var_biased * (m / (m - 1))


def ema(running: np.ndarray, batch: np.ndarray, factor: float) -> np.ndarray:
    """Running-statistic update ``(1 - factor) * running + factor * batch``;
    ``factor`` is the new-batch weight (PyTorch momentum)."""
    return (1.0 - factor) * running + factor * batch


def backward_batch_stats(g, x, mean, var, eps, weight, axis):
    """Gradients of Alg. 1 when the batch statistics were used (train mode).

    Returns ``(dx, dweight, dbias)``; dx has the shape of ``x``, the others (C,).
    ``dx = w / sigma * (g - mean(g) - x_hat * mean(g * x_hat))``.
    """
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    axes, cv = reduce_axes(x.ndim, axis), (lambda v: channel_view(v, x.ndim, axis))
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = (x - cv(mean)) * cv(invstd)
    dx = cv(weight * invstd) * (g - g.mean(axis=axes, keepdims=True)
                                - x_hat * (g * x_hat).mean(axis=axes, keepdims=True))
    return dx, (g * x_hat).sum(axis=axes), g.sum(axis=axes)


def backward_global_stats(g, x, mean, var, eps, weight, axis):
    """Gradients when fixed (running) statistics were used: BN is a per-channel
    affine map, ``dx = g * w / sqrt(var + eps)``. Returns ``(dx, dweight, dbias)``."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    axes, cv = reduce_axes(x.ndim, axis), (lambda v: channel_view(v, x.ndim, axis))
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = (x - cv(mean)) * cv(invstd)
    return g * cv(weight * invstd), (g * x_hat).sum(axis=axes), g.sum(axis=axes)


# ---------------------------------------------------------------- simulation

@dataclass
class Expected:
    """Expected value of one observable after one step, float64, with its
    magnitude (same shape; 0 means the value must be exact)."""

    value: np.ndarray
    magnitude: np.ndarray


@dataclass
class Expectation:
    """Everything the oracle expects from a case under a profile:
    ``values[(step_index, observable)] -> Expected``."""

    profile: Profile
    values: dict[tuple[int, str], Expected] = field(default_factory=dict)


@dataclass
class _Forward:
    x: np.ndarray
    used_batch: bool
    mean: np.ndarray
    var: np.ndarray
    abs_mean: np.ndarray
    pending: tuple | None = None


def simulate(case: Case, arrays: CaseArrays, profile: Profile = CANONICAL) -> Expectation:
    """Replay ``case.steps`` on one float64 layer and return what every
    observable should be after every step.

    Inputs are ``arrays`` (the cast values every adapter receives), promoted to
    float64. Raises :class:`OracleUndefined` where the semantics are undefined.
    """
    L, axis = case.layer, case.input.axis
    as32 = lambda v: None if v is None else float(np.float32(v))  # noqa: E731
    if profile.eps_dtype == "float32":
        L = L.model_copy(update={"eps": as32(L.eps)})
    if profile.momentum_dtype == "float32":
        L = L.model_copy(update={"momentum": as32(L.momentum)})
    elif profile.momentum_dtype == "float32_decay" and L.momentum is not None:
        L = L.model_copy(update={"momentum": 1.0 - as32(1.0 - L.momentum)})
    ndim, m = len(case.input.shape), case.input.reduction_size
    f64 = lambda a: np.asarray(a, dtype=np.float64).copy()  # noqa: E731
    rm, rv = f64(arrays.init["running_mean"]), f64(arrays.init["running_var"])
    w = f64(arrays.init["weight"]) if L.affine else np.ones(L.num_features)
    b = f64(arrays.init["bias"]) if L.affine else np.zeros(L.num_features)
    mag = {"running_mean": np.abs(rm), "running_var": np.abs(rv), "weight": np.abs(w), "bias": np.abs(b)}
    nbt = 0
    last: _Forward | None = None
    grads: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out = Expectation(profile)
    cv = lambda v: channel_view(v, ndim, axis)  # noqa: E731

    def apply_update(mean, var, abs_mean, mag_var):
        nonlocal rm, rv, nbt
        nbt += 1
        if m == 0:  # an empty batch carries no statistics: counted, nothing averaged in
            return
        if L.momentum is None:
            if not profile.cumulative_average:
                raise OracleUndefined("momentum=None (cumulative average) is not defined in this profile")
            factor = 1.0 / nbt
        else:
            factor = L.momentum
        pop = population_variance(var, m, profile.running_var_correction)
        corr = m / (m - 1) if profile.running_var_correction == "unbiased" else 1.0
        rm, rv = ema(rm, mean, factor), ema(rv, pop, factor)
        mag["running_mean"] = (1 - factor) * mag["running_mean"] + factor * abs_mean
        mag["running_var"] = (1 - factor) * mag["running_var"] + factor * corr * mag_var

    def effective_gamma():
        """The gamma the kernel uses and its magnitude (1 when gamma is fixed)."""
        return (np.ones_like(w), np.ones_like(w)) if profile.fixed_gamma else (w, mag["weight"])

    for i, step in enumerate(case.steps):
        if isinstance(step, Forward):
            x = np.asarray(arrays.batches[step.batch], dtype=np.float64)
            axes = reduce_axes(ndim, axis)
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                abs_mean = np.abs(x).mean(axis=axes)
            as_train = step.mode == "train" and profile.train_statistics == "batch"
            use_batch = as_train or not L.track_running_stats
            if use_batch:
                mean, var = batch_stats(x, axis)  # NaN for an empty batch; the output is empty
                # Two-pass variance: rounding of (x - mean) costs ~u*|x| per term.
                mag_var = var + 2.0 * np.sqrt(var) * abs_mean
            else:
                mean, var, mag_var = rm.copy(), rv.copy(), None
            last = _Forward(x, use_batch, mean, var, abs_mean)
            if as_train and L.track_running_stats:
                if profile.update_at == "forward":
                    apply_update(mean, var, abs_mean, mag_var)
                else:
                    last.pending = (mean, var, abs_mean, mag_var)
            gamma, gamma_mag = effective_gamma()
            with np.errstate(invalid="ignore", divide="ignore"):
                y = normalize(x, mean, var, L.eps, gamma, b, axis)
                invstd = 1.0 / np.sqrt(var + L.eps)
                # mag["weight"] >= |w|: it carries the rounding history of gamma (SGD
                # updates that cancel leave a small gamma with an absolute error).
                y_mag = cv(gamma_mag * invstd) * (np.abs(x) + cv(np.abs(mean))) + cv(mag["bias"])
            out.values[(i, "output")] = Expected(y, y_mag)
        elif isinstance(step, Backward):
            assert last is not None  # guaranteed by catalogue validation
            g = np.asarray(arrays.grad_outputs[i], dtype=np.float64)
            fn = backward_batch_stats if last.used_batch else backward_global_stats
            axes = reduce_axes(ndim, axis)
            gamma, gamma_mag = effective_gamma()
            with np.errstate(invalid="ignore", divide="ignore"):
                dx, dw, db = fn(g, last.x, last.mean, last.var, L.eps, gamma, axis)
                invstd = 1.0 / np.sqrt(last.var + L.eps)
                xh_mag = (np.abs(last.x) + cv(np.abs(last.mean))) * cv(invstd)
                if last.used_batch:
                    dx_mag = cv(gamma_mag * invstd) * (np.abs(g) + np.abs(g).mean(axis=axes, keepdims=True)
                                                       + xh_mag * (np.abs(g) * xh_mag).mean(axis=axes, keepdims=True))
                else:
                    dx_mag = cv(gamma_mag * invstd) * np.abs(g)
                dw_mag, db_mag = (np.abs(g) * xh_mag).sum(axis=axes), np.abs(g).sum(axis=axes)
                if profile.fixed_gamma:  # the gradient of a fixed gamma is 0, exactly
                    dw, dw_mag = np.zeros_like(dw), np.zeros_like(dw_mag)
            out.values[(i, "grad_input")] = Expected(dx, dx_mag)
            if L.affine:
                grads = {"weight": (dw, dw_mag), "bias": (db, db_mag)}
                for name, (v, vm) in grads.items():
                    if name not in L.frozen:
                        out.values[(i, f"grad_{name}")] = Expected(v, vm)
            if last.pending is not None:
                apply_update(*last.pending)
                if profile.update_at != "each_backward":  # each_backward: every backward re-applies it
                    last.pending = None
        elif isinstance(step, SgdStep):
            if L.affine:
                for name, (grad, grad_mag) in grads.items():
                    if name in L.frozen:
                        continue
                    if name == "weight":
                        w = w - step.lr * grad
                    else:
                        b = b - step.lr * grad
                    mag[name] = mag[name] + step.lr * grad_mag
        # State observables after every step.
        if L.track_running_stats:
            out.values[(i, "running_mean")] = Expected(rm.copy(), mag["running_mean"].copy())
            out.values[(i, "running_var")] = Expected(rv.copy(), mag["running_var"].copy())
            out.values[(i, "num_batches_tracked")] = Expected(np.asarray(float(nbt)), np.asarray(0.0))
        if L.affine:
            out.values[(i, "weight")] = Expected(w.copy(), mag["weight"].copy())
            out.values[(i, "bias")] = Expected(b.copy(), mag["bias"].copy())
    return out
