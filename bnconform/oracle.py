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

import functools
import warnings
from dataclasses import dataclass, field, fields, replace
from typing import Literal, get_args, get_origin, get_type_hints

import numpy as np

from .arrays import CaseArrays
from .catalogue import Backward, Case, Forward, SgdStep


#: Error model shared with :mod:`bnconform.compare` (which re-exports these):
#: unit roundoff u = 2^-p of each dtype (p = significand bits incl. the
#: implicit one), the accumulation dtype frameworks use per input dtype
#: (float32 for half inputs: ``opmath_t`` in
#: ``aten/src/ATen/native/cpu/batch_norm_kernel.cpp``, Flax
#: ``force_float32_reductions``, Keras ``result_type(x, float32)``) and the
#: safety factor for the handful of elementwise operations after a reduction.
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
ACCUMULATION_DTYPE = {"float64": "float64", "float32": "float32", "float16": "float32", "bfloat16": "float32"}
SAFETY = 4.0
#: Roundings of ``running -= (running - batch) * (1 - decay)`` at the scale of
#: ``|f (running - batch)|`` (``Profile.ema_form``: ``1 - decay``, the difference, the product).
EMA_SUBTRACT_ROUNDINGS = 3
_PRECISION_OBSERVABLES = frozenset({"output", "grad_input", "grad_weight", "grad_bias", "running_mean",
                                    "running_var", "weight", "bias"})


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
        ``"forward"`` (PyTorch, Keras), ``"backward"`` (the first backward
        through the forward applies it) or ``"each_backward"`` (every backward
        through the same forward re-applies it: MXNet CPU,
        ``src/operator/nn/batch_norm.cc``, the update runs in BatchNormBackward).
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
    ``sgd_lr_dtype``: precision in which the learning rate reaches the SGD
        update: ``"float64"`` (as given) or ``"float32"`` (``w - fl32(lr) g``:
        MXNet's ``SGDParam::lr`` is a C++ float, ``src/operator/optimizer_op-inl.h``;
        visible in float64 cases).
    ``fixed_gamma``: gamma is treated as 1 in forward and backward and its
        gradient is 0 whatever value it holds (MXNet's default ``fix_gamma=True``,
        ``src/operator/nn/batch_norm.cc``).
    ``train_statistics``: what a ``train``-mode forward normalises with:
        ``"batch"`` (the paper) or ``"running"`` — the layer behaves as in
        inference even in training mode and updates nothing (Keras
        ``trainable=False`` since TF 2.0; an exported inference graph).
    ``empty_batch_update``: what a training forward on an EMPTY batch (m = 0
        values per channel) does to the running statistics. ``"skip"``
        (canonical; PyTorch ``aten/src/ATen/native/Normalization.cpp`` returns
        early: the forward is counted, nothing is averaged in); ``"nan"`` — the
        0/0 batch mean and variance are averaged in, so running_mean and
        running_var become NaN (Flax ``flax/linen/normalization.py``
        ``BatchNorm.__call__``; Keras 3 ``BatchNormalization.call``; ONNX
        ``onnx/reference/ops/op_batch_normalization.py``); ``"zero"`` — the
        batch mean and variance are 0 (``tf.math.divide_no_nan`` in Keras
        ``keras/src/backend/tensorflow/nn.py`` ``_compute_moments_sync``) and
        are averaged in: the running statistics shrink by the decay.
    ``running_update``: whether a training forward's running-statistics update
        reaches the running statistics. ``"average"`` (canonical: the paper's
        moving average, every framework's intent); ``"lost"`` — the batch
        statistics are computed and normalise the batch, the update is written
        into a temporary and discarded, the running statistics keep their value
        (Keras 3.0-3.1 on the torch backend under a mixed precision policy:
        ``keras/src/backend/torch/core.py`` ``Variable._direct_assign`` is
        ``self.value.copy_(value)``, and ``value`` is the autocast float16 COPY of
        the float32 variable: ``keras/src/backend/common/variables.py``
        ``_maybe_autocast``).
    ``frozen_update``: what an SGD step does to a FROZEN parameter.
        ``"skip"`` (canonical: PyTorch ``requires_grad=False`` leaves it out of
        the optimizer); ``"zero_lr"`` — it is still stepped, with learning rate
        0: ``w - 0 * g``, which is ``w`` where the gradient is finite and NaN
        where it is NaN or infinite (MXNet gluon ``lr_mult = 0``: the SGD
        kernel computes ``lr * lr_mult * grad``, ``src/operator/optimizer_op-inl.h``
        ``SGDKernel``).
    ``empty_batch_grad_weight``: gamma's gradient after a training forward on
        an EMPTY batch. ``"zero"`` (canonical: ``sum(g x_hat)`` over no values,
        PyTorch); ``"nan"`` — the 0/0 batch variance reaches gamma's gradient:
        Keras 3 ``ops.batch_normalization`` computes
        ``(x - mean) * (rsqrt(var + eps) * gamma) + beta``, so gamma's gradient
        is ``sum(g (x - mean)) * rsqrt(var + eps)`` = 0 * NaN = NaN
        (``keras/src/backend/torch/nn.py`` ``batch_normalization``; the same on
        the TF and JAX backends).

    ``replica_reduction`` (replica cases only, ``Case.replicas``): how the
        per-replica statistics are combined across replicas. ``"count_weighted"``
        (canonical): the statistics of the UNION of the replicas' values, each
        replica weighted by its count (:func:`replica_batch_stats`; PyTorch
        ``torch/nn/modules/_functions.py`` ``SyncBatchNorm.forward`` all-gathers
        the per-replica counts and combines with
        ``batch_norm_gather_stats_with_counts``; Keras ``_compute_moments_sync``
        all-reduces the sums and the counts). ``"replica_average"``: the
        unweighted average of the per-replica means and of the per-replica mean
        squared deviations from that mean (``lax.pmean`` of per-device means:
        Flax ``flax/linen/normalization.py`` ``_compute_stats``
        ``maybe_distributed_mean``) — equal to the canonical one for equal
        per-replica counts; an empty replica's 0/0 mean makes everything NaN.
        Gradients follow the forward that was computed (:func:`replica_backward`).
    ``empty_replica_update`` (replica cases only): what a replica holding NO
        values does with the synchronized statistics. ``"global"`` (canonical):
        it applies the same running update as every other replica (the
        statistics are global; PyTorch ``SyncBatchNorm`` and Keras 3 update
        every rank alike). ``"skip"``: it leaves its running statistics
        unchanged, so the replicas' running statistics diverge (tf-keras
        ``_assign_moving_average``'s ``tf.where(inputs_size > 0, ...)`` zero-size
        guard, active under a distribution strategy,
        ``tf_keras/layers/normalization/batch_normalization.py``). A replica's
        batch size is the same in every batch of a case, so such a replica
        keeps its INITIAL running statistics throughout.

    ``aliased_affine_update``: a batch-statistics forward scales and shifts
        with the UPDATED running statistics wherever gamma / beta held the same
        values as running_var / running_mean before the step (gamma equal to
        running_var -> new running_var, else equal to running_mean -> new
        running_mean; likewise beta): a runtime that merges equal constant
        tensors into one buffer and writes the running update into its input
        buffers before computing the output (onnxruntime: ConstantSharing, and
        the CPU kernel's ``Alias(3,1).Alias(4,2)`` in
        ``onnxruntime/core/providers/cpu/nn/batch_norm.cc``; microsoft/onnxruntime#29790).

    ``eval_zero_debias``: a running-statistics forward normalises with
        ``running / (1 - d^t)``, ``d = 1 - momentum`` the decay and ``t`` the
        training updates so far (``t = 0``: as is): the Adam-style "zero
        debias" of an average that started at ZERO (Haiku
        ``ExponentialMovingAverage(zero_debias=True)``), applied by Equinox
        ``BatchNorm(mode="batch")`` (``equinox/nn/_batch_norm.py``) to running
        statistics initialised at 0 and 1. The running statistics themselves
        stay the plain moving average.

    ``moments_count_offset``: a constant ``c >= 0`` added to the count ``m`` of
        values per channel in the batch statistics a forward normalises with:
        ``mean = sum(x) / (m + c)`` and ``var = sum((x - mean)^2) / (m + c)``,
        the squared deviations taken from that same (shrunk) mean. ``0.0``
        (canonical) is Alg. 1. Keras 3 ``BatchNormalization._moments``, mask
        branch (``keras/src/layers/normalization/batch_normalization.py``,
        keras 3.15.1 lines 447-471: ``mean = masked_input_sum /
        (sum_of_weights + backend.epsilon())``, ``difference =
        ops.where(mask_broadcasted, inputs - mean, 0)``, ``variance =
        weighted_distsq / (sum_of_weights + backend.epsilon())``) has
        ``c = backend.epsilon() = 1e-7``: a relative bias of ``~c / m``, below
        float32's resolution, 1e9 ulps in float64. The output, the running
        update (the biased ``var``, or ``m / (m - 1)`` times it when
        ``running_var_correction`` is unbiased) and the backward
        (:func:`backward_offset_batch_stats`, the exact derivative of these
        formulas: ``sum(x - mean) = c mean`` is no longer 0) follow. A value
        change, exact in float64, not an envelope. An empty batch (m = 0) is
        left to ``empty_batch_update`` (Keras' ``0 / (0 + c) = 0`` is its
        ``"zero"``); replica cases and a one-pass ``variance_algorithm`` with
        ``c != 0`` are not modelled (:func:`simulate` raises ``ValueError``).

    Precision knobs — they change the ERROR MODEL, not the semantics. Each
    widens the tolerance by an explicit, derived envelope (``Expected.spread``,
    see :func:`simulate`); the canonical profile has none.

    ``variance_algorithm``: how the batch variance is computed.
        ``"two_pass"`` (canonical: ``E[(x - E[x])^2]``, the stable algorithm,
        Higham 2002 sec. 1.9); ``"one_pass"`` — ``E[x^2] - E[x]^2`` with no
        clamp, which can be negative (Keras 3 torch backend,
        ``keras/src/backend/torch/nn.py`` ``moments``: "faster but less
        numerically stable"); ``"one_pass_clamped"`` — ``max(E[x^2] - E[x]^2, 0)``
        (Flax ``_compute_stats`` with ``use_fast_variance=True``, the default;
        Keras ``synchronized=True``, ``_compute_moments_sync``). The oracle
        EMULATES the one-pass formula in the compute precision on the case's
        arrays and judges with that algorithm's own error bound.
    ``compute_dtype``: the precision the whole layer computes in when it is
        NARROWER than the default (float64 for float64 cases, float32
        otherwise): a dtype name, or ``"input"`` (the case's input dtype:
        half-precision arithmetic for half inputs). ``"default"`` = no change.
        Keras 3 on JAX/torch computes a float64 layer in float32
        (``keras/src/backend/common/dtypes.py`` result_type maps float64 to
        float32; ``BatchNormalization.call``: ``compute_dtype``).
    ``summation``: the error growth of the per-channel reductions (sums over
        the m values of a channel: mean, variance, the backward sums).
        ``"probabilistic"`` (canonical): rounding errors that grow like
        sqrt(m) (Higham 2002 sec. 4.2, the tolerance's own model);
        ``"recursive"`` — one sequential accumulator per channel whose
        rounding errors need not average out (terms far below the running
        sum's ulp are lost or rounded one way: the sum of m squared deviations
        is biased low), bounded only by the deterministic bound of recursive
        summation, ``(m - 1) u sum|x_i|`` (Higham 2002 eq. (4.4)), u of the
        default accumulation dtype. Every reduced observable's envelope gets
        ``SAFETY * u * (m - 1) * magnitude`` (MXNet's CPU kernel,
        ``src/operator/nn/batch_norm.cc`` BatchNormForwardImpl:
        ``mean[channel] += *in_data`` and ``var[channel] += (x - mean)^2`` in
        one float accumulator per channel).
    ``ema_form``: the arithmetic form of the running update ``new = (1 - f)
        running + f batch`` (``f`` the momentum, ``1 - f`` the decay), computed
        in the running statistics' dtype (unit roundoff ``u``: float32, or
        float64 for float64 cases; a narrower ``accumulation_dtype`` of the
        running statistic wins). ``"interpolate"`` (canonical: the two
        products summed, as the tolerance's magnitude ``(1 - f) |running| + f
        |batch|`` models it); ``"subtract"`` — ``running -= (running - batch)
        * c``, ``c = 1 - decay``: TensorFlow's ``assign_moving_average``
        (``tensorflow/python/training/moving_averages.py``, TF 2.21.0 lines
        88-93: ``decay = ops.convert_to_tensor(1.0 - decay)``, cast to the
        variable's dtype, and ``update_fn``: ``state_ops.assign_sub(v, (v -
        value) * decay)``), the form tf-keras
        ``BatchNormalization._assign_moving_average``
        (``tf_keras/src/layers/normalization/batch_normalization.py``, tf-keras
        2.21.0 lines 865-886; the ``fused=False`` / ``synchronized=True``
        path) and the
        ``tf.nn.moments`` rows of ``adapters/tf_nn.py`` use. It rounds at the
        scale of the DIFFERENCE ``|running - batch|``, i.e. of the OLD running
        value, not of the result: with ``f = 1`` a batch variance of 1e-7
        replacing a running variance of 1 comes back as ``fl(1 - 1e-7)``
        subtracted from 1, off by ~u. Four roundings per update, with ``d =
        running - batch`` (first order in ``u``):
        (1) ``c = fl(1 - decay)`` in the variable's dtype, ``|c - f| <= u |f|``;
        (2) ``fl(running - batch) = d (1 + d2)``, ``|d2| <= u``; (3) the
        product by ``c``, ``(1 + d3)``; so ``fl(d c) = d f (1 + t)``, ``|t| <=
        3u``; (4) the subtraction from ``running``, a rounding at ``|new|``:
        the storage rounding the tolerance already charges every step.
        (1)-(3) add ``3 u |f| |d|``, which the interpolation's magnitude
        ``(1 - f) |running| + f |batch|`` does not contain where ``f`` is
        near 1 (at ``f = 1`` it is ``|batch|`` alone). The envelope adds
        ``SAFETY`` times that per update and carries earlier updates'
        envelope through the moving average (``(1 - f) spread + ...``; the
        form is linear in ``running``: an error ``e`` in it leaves ``(1 - f)
        e``), like ``compute_dtype``'s running-statistics envelope. The value
        stays the exact float64 average. A decay rounded BEFORE ``1 - decay``
        (a float32 decay tensor: tf-keras converts ``momentum`` to a float32
        tensor first; a float32 decay cast up to a float64 variable) moves
        the weight itself: ``momentum_dtype`` (``float32_decay``, ``float32``).
    ``accumulation_dtype``: per-observable override of the precision that
        observable is computed/accumulated in, ``{observable: dtype or
        "input"}`` (a mapping; stored as sorted pairs). E.g. backward
        reductions in the half input dtype: ``{"grad_weight": "input",
        "grad_bias": "input"}``. Only a dtype narrower than the default
        widens anything. Parameters updated by ``sgd_step`` inherit the
        envelope of their gradient.
    """

    name: str = "canonical"
    running_var_correction: Literal["unbiased", "biased"] = "unbiased"
    update_at: Literal["forward", "backward", "each_backward"] = "forward"
    cumulative_average: bool = True
    train_statistics: Literal["batch", "running"] = "batch"
    eps_dtype: Literal["float64", "float32"] = "float64"
    momentum_dtype: Literal["float64", "float32", "float32_decay"] = "float64"
    fixed_gamma: bool = False
    sgd_lr_dtype: Literal["float64", "float32"] = "float64"
    empty_batch_update: Literal["skip", "nan", "zero"] = "skip"
    empty_batch_grad_weight: Literal["zero", "nan"] = "zero"
    frozen_update: Literal["skip", "zero_lr"] = "skip"
    running_update: Literal["average", "lost"] = "average"
    replica_reduction: Literal["count_weighted", "replica_average"] = "count_weighted"
    empty_replica_update: Literal["global", "skip"] = "global"
    aliased_affine_update: bool = False
    eval_zero_debias: bool = False
    moments_count_offset: float = 0.0
    variance_algorithm: Literal["two_pass", "one_pass", "one_pass_clamped"] = "two_pass"
    compute_dtype: Literal["default", "input", "float64", "float32", "float16", "bfloat16"] = "default"
    accumulation_dtype: tuple[tuple[str, str], ...] = ()
    summation: Literal["probabilistic", "recursive"] = "probabilistic"
    ema_form: Literal["interpolate", "subtract"] = "interpolate"

    def __post_init__(self):
        acc = self.accumulation_dtype
        if isinstance(acc, dict):
            acc = tuple(sorted(acc.items()))
        try:
            acc = tuple(sorted((str(k), str(v)) for k, v in acc))
        except (TypeError, ValueError):
            raise ValueError(f"profile {self.name!r}: accumulation_dtype must map observables to dtypes, "
                             f"got {self.accumulation_dtype!r}") from None
        object.__setattr__(self, "accumulation_dtype", acc)
        off = self.moments_count_offset
        if isinstance(off, bool) or not isinstance(off, (int, float)) or not np.isfinite(off) or off < 0:
            raise ValueError(f"profile {self.name!r}: moments_count_offset must be a finite number >= 0, got {off!r}"
                             + (" (YAML reads 1e-7 as a string: write 1.0e-7)" if isinstance(off, str) else ""))
        object.__setattr__(self, "moments_count_offset", float(off))
        hints = get_type_hints(Profile)
        for f in fields(self):
            allowed = get_args(hints[f.name]) if get_origin(hints[f.name]) is Literal else None
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"profile {self.name!r}: {f.name}={getattr(self, f.name)!r} is not one of "
                                 f"{', '.join(map(repr, allowed))}")
        for obs, dt in acc:
            if obs not in _PRECISION_OBSERVABLES:
                raise ValueError(f"profile {self.name!r}: accumulation_dtype names {obs!r}, not one of "
                                 f"{', '.join(sorted(_PRECISION_OBSERVABLES))}")
            if dt != "input" and dt not in UNIT_ROUNDOFF:
                raise ValueError(f"profile {self.name!r}: accumulation_dtype[{obs!r}]={dt!r} is not 'input' or "
                                 f"one of {', '.join(UNIT_ROUNDOFF)}")

    def with_options(self, name: str, **options) -> "Profile":
        """A copy with ``options`` applied; raises ``TypeError`` for unknown
        knobs and ``ValueError`` for a value a knob does not take."""
        return replace(self, name=name, **options)

    def options(self) -> dict:
        """The knobs that differ from the canonical profile (``accumulation_dtype`` as a dict)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "name" and getattr(self, f.name) != getattr(CANONICAL, f.name)}
        if "accumulation_dtype" in out:
            out["accumulation_dtype"] = dict(out["accumulation_dtype"])
        return out

    @property
    def models_precision(self) -> bool:
        """Whether any precision knob is set (then expectations carry a spread)."""
        return (self.variance_algorithm != "two_pass" or self.compute_dtype != "default"
                or bool(self.accumulation_dtype) or self.summation != "probabilistic"
                or self.ema_form != "interpolate")


CANONICAL = Profile()

#: Knobs whose value is a mapping: merged key by key across divergences.
MAPPING_KNOBS = frozenset({"accumulation_dtype"})


def merge_options(option_sets) -> dict:
    """Merge the oracle options of several divergences into one ``Profile``
    options dict. Scalar knobs: the later value wins (as ``dict.update``).
    Mapping knobs (``accumulation_dtype``): merged key by key, so two
    divergences widening different observables both apply; raises
    ``ValueError`` when two give the same observable different dtypes.
    """
    merged: dict = {}
    for options in option_sets:
        for knob, value in options.items():
            if knob in MAPPING_KNOBS:
                into = dict(merged.get(knob, {}))
                for key, v in dict(value).items():
                    if key in into and into[key] != v:
                        raise ValueError(f"conflicting {knob}[{key!r}]: {into[key]!r} and {v!r}")
                    into[key] = v
                merged[knob] = into
            else:
                merged[knob] = value
    return merged


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
    # ((x - mean) / sqrt(var + eps)) * weight + bias, evaluated in that order in ONE array
    # (in place: no fresh, page-faulted temporary per operation at 2^21 values).
    y = x - cv(mean)
    y /= np.sqrt(cv(var) + eps)
    y *= cv(weight)
    y += cv(bias)
    return y


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
    # The same operations in the same order as the formula, in place, with g * x_hat
    # formed once for its mean and its sum (bit for bit the same values).
    x_hat = x - cv(mean)
    x_hat *= cv(invstd)
    gx = g * x_hat
    gx_mean, dweight = gx.mean(axis=axes, keepdims=True), gx.sum(axis=axes)
    dx = g - g.mean(axis=axes, keepdims=True)
    dx -= np.multiply(x_hat, gx_mean, out=gx)
    np.multiply(cv(weight * invstd), dx, out=dx)   # this operand order: NaN payloads too
    return dx, dweight, g.sum(axis=axes)


def backward_global_stats(g, x, mean, var, eps, weight, axis):
    """Gradients when fixed (running) statistics were used: BN is a per-channel
    affine map, ``dx = g * w / sqrt(var + eps)``. Returns ``(dx, dweight, dbias)``."""
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    axes, cv = reduce_axes(x.ndim, axis), (lambda v: channel_view(v, x.ndim, axis))
    invstd = 1.0 / np.sqrt(var + eps)
    x_hat = (x - cv(mean)) * cv(invstd)
    return g * cv(weight * invstd), (g * x_hat).sum(axis=axes), g.sum(axis=axes)


def offset_batch_stats(x: np.ndarray, axis: int, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance with ``offset`` added to the count
    (``Profile.moments_count_offset``); both (C,), float64::

        mean = sum(x) / (m + offset),  var = sum((x - mean)^2) / (m + offset)

    the deviations taken from that same mean (Keras 3 ``BatchNormalization._moments``,
    mask branch). ``offset = 0`` is :func:`batch_stats` up to rounding; ``m = 0`` gives 0 and 0.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim, axis)
    d = float(np.prod([x.shape[a] for a in axes])) + offset
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(axis=axes) / d
        var = ((x - channel_view(mean, x.ndim, axis)) ** 2).sum(axis=axes) / d
    return mean, var


def backward_offset_batch_stats(g, x, mean, var, eps, weight, axis, offset):
    """Gradients of ``y = w (x - mean) s + b``, ``s = 1/sqrt(var + eps)``, with the
    batch statistics of :func:`offset_batch_stats` (``d = m + offset``), train mode.

    With ``D = x - mean``: ``dmean/dx_i = 1/d``; ``sum_j D_j = sum(x) - m mean =
    offset mean`` (0 only for ``offset = 0``), so ``dvar/dx_i = (2/d) (D_i -
    sum_j D_j / d) = (2/d) (D_i - offset mean / d)`` and ``ds/dx_i = -s^3/2 dvar/dx_i``.
    Summed over the outputs::

        dx = w s (g - sum(g) / d - s^2 sum(g D) / d (D - offset mean / d))
        dweight = s sum(g D),  dbias = sum(g)

    (``offset = 0``: :func:`backward_batch_stats`). Returns ``(dx, dweight, dbias)``.
    """
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    axes, cv = reduce_axes(x.ndim, axis), (lambda v: channel_view(v, x.ndim, axis))
    d = float(np.prod([x.shape[a] for a in axes])) + offset
    invstd = 1.0 / np.sqrt(var + eps)
    dev = x - cv(mean)
    sgd = (g * dev).sum(axis=axes)
    dx = g - cv(g.sum(axis=axes) / d) - cv(invstd**2 * sgd / d) * (dev - cv(offset * mean / d))
    return cv(weight * invstd) * dx, invstd * sgd, g.sum(axis=axes)


# ---------------------------------------------------------------- replicas
#
# Synchronized BatchNorm over R data-parallel replicas, written as the
# distributed computation: each replica reduces ITS slice of the batch to
# partial results, the partial results are reduced across replicas (the
# all-reduce / all-gather), and each replica finishes with the global values.
# Nothing here looks at the concatenated batch as a whole; that the result
# equals :func:`batch_stats` / :func:`backward_batch_stats` on the concatenated
# batch is CHECKED by tests/test_replicas.py, not assumed.


def replica_weights(sizes: list[int], reduction: str = "count_weighted") -> np.ndarray:
    """Weight ``W_r`` of replica r's statistics in the cross-replica combination, (R,) float64.

    ``"count_weighted"``: ``n_r / sum(n)`` (the union of the replicas' values;
    an empty replica weighs 0). ``"replica_average"``: ``1 / R`` for every
    replica (``lax.pmean`` of per-replica means, Flax ``_compute_stats``).
    Raises ``ValueError`` for an unknown reduction.
    """
    n = np.asarray(sizes, dtype=np.float64)
    if reduction == "count_weighted":
        return n / n.sum() if n.sum() else np.full(len(n), np.nan)
    if reduction == "replica_average":
        return np.full(len(n), 1.0 / len(n))
    raise ValueError(f"unknown replica reduction {reduction!r}")


def replica_partials(x: np.ndarray, axis: int, sizes: list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Each replica's partial statistics of its rows of ``x`` ((N, C, *), rows split
    along axis 0 by ``sizes``): ``(count, mean, M2)`` per replica with ``count``
    the values per channel it holds, ``mean`` (C,) and ``M2 = sum((x - mean)^2)``
    (C,), two-pass within the replica (NaN mean for an empty replica: no values)."""
    x = np.asarray(x, dtype=np.float64)
    axes, out, start = reduce_axes(x.ndim, axis), [], 0
    per_row = int(np.prod([x.shape[a] for a in axes if a != 0]))
    for n in sizes:
        part = x[start:start + n]
        start += n
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = part.mean(axis=axes)
            m2 = ((part - channel_view(mean, x.ndim, axis)) ** 2).sum(axis=axes)
        out.append((n * per_row, mean, m2))
    return out


def replica_batch_stats(x: np.ndarray, axis: int, sizes: list[int],
                        reduction: str = "count_weighted") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and BIASED variance of synchronized BatchNorm, (C,) each, float64.

    ``x``: the global batch ``(N, C, *)`` (channel at ``axis``), replica r
    holding ``sizes[r]`` rows along axis 0. Computed from the per-replica
    partials of :func:`replica_partials` combined across replicas with
    weights ``W_r`` (:func:`replica_weights`)::

        mean = sum_r W_r mean_r
        var  = sum_r W_r (M2_r / n_r + (mean_r - mean)^2)

    With ``W_r = n_r / n`` this is the parallel variance combination of Chan,
    Golub & LeVeque (1979, "Updating formulae and a pairwise algorithm for
    computing sample variances"), the one PyTorch's SyncBatchNorm applies to
    per-replica (mean, invstd, count) (``torch/nn/modules/_functions.py``
    ``SyncBatchNorm.forward`` -> ``torch.batch_norm_gather_stats_with_counts``):
    the mean and biased variance of the union of all replicas' values (Ioffe &
    Szegedy 2015 Alg. 1 on the global batch). Replicas with no values are
    skipped (weight 0); every replica empty gives NaN (no statistics).
    ``"replica_average"`` weighs every replica 1/R (an empty replica: NaN).
    """
    parts = replica_partials(x, axis, sizes)
    counts = [c for c, _, _ in parts]
    W = replica_weights(counts, reduction)
    c = np.asarray(x).shape[axis % np.ndim(x)]
    if not any(counts):
        return np.full(c, np.nan), np.full(c, np.nan)
    mean, var = np.zeros(c), np.zeros(c)
    with np.errstate(invalid="ignore", divide="ignore"):
        for (n, mu, _), w in zip(parts, W):
            if n or reduction != "count_weighted":
                mean = mean + w * mu
        for (n, mu, m2), w in zip(parts, W):
            if n or reduction != "count_weighted":
                var = var + w * (m2 / n + (mu - mean) ** 2) if n else var + w * np.nan
    return mean, var


def replica_backward(g, x, mean, var, eps, weight, axis, sizes, reduction: str = "count_weighted"):
    """Gradients of synchronized BatchNorm in training, through the cross-replica reduction.

    ``g``, ``x``: the global batch ``(N, C, *)``; replica r holds ``sizes[r]``
    rows. Each replica reduces its ``sum(g)`` and ``sum(g (x - mean))``; the
    partial sums are SUMMED across replicas (PyTorch ``_functions.py``
    ``SyncBatchNorm.backward``: ``batch_norm_backward_reduce`` then
    ``all_reduce``), and replica r finishes with the global sums ``S_g``,
    ``S_gx``::

        dx_r = w s (g_r - a_r S_g - a_r (x_r - mean) s^2 S_gx),  s = 1/sqrt(var + eps)

    where ``a_r = W_r / n_r`` is the weight of one of replica r's values in the
    mean (``1/n`` canonically: the derivative of the union's mean and variance;
    ``1/(R n_r)`` for ``"replica_average"``, the derivative of that forward). So
    replica r's input gradient depends on every replica's upstream gradient.
    ``dweight`` and ``dbias`` are the cross-replica sums of the per-replica
    ``s sum(g_r (x_r - mean))`` and ``sum(g_r)``: the gradient of the global loss.
    Returns ``(dx, dweight, dbias)``: dx of the shape of ``x``, the others (C,).
    """
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    axes, cv = reduce_axes(x.ndim, axis), (lambda v: channel_view(v, x.ndim, axis))
    per_row = int(np.prod([x.shape[a] for a in axes if a != 0]))
    W = replica_weights([n * per_row for n in sizes], reduction)
    invstd = 1.0 / np.sqrt(var + eps)
    starts = np.cumsum([0] + list(sizes))
    s_g = s_gx = 0.0
    for r in range(len(sizes)):  # the per-replica partial sums, all-reduced
        gr, xr = g[starts[r]:starts[r + 1]], x[starts[r]:starts[r + 1]]
        s_g = s_g + gr.sum(axis=axes)
        s_gx = s_gx + (gr * (xr - cv(mean))).sum(axis=axes)
    pieces = []
    for r, n in enumerate(sizes):
        gr, xr = g[starts[r]:starts[r + 1]], x[starts[r]:starts[r + 1]]
        with np.errstate(invalid="ignore", divide="ignore"):
            a = W[r] / (n * per_row) if n else 0.0
        pieces.append(cv(weight * invstd) * (gr - a * cv(s_g) - a * (xr - cv(mean)) * cv(invstd ** 2 * s_gx)))
    return np.concatenate(pieces, axis=0), invstd * s_gx, s_g


def replica_grad_weights(x: np.ndarray, axis: int, sizes: list[int], reduction: str) -> np.ndarray:
    """``a`` of :func:`replica_backward` per row of ``x``, shaped to broadcast against ``x``."""
    axes = reduce_axes(np.ndim(x), axis)
    per_row = int(np.prod([np.shape(x)[a] for a in axes if a != 0]))
    W = replica_weights([n * per_row for n in sizes], reduction)
    a = np.concatenate([np.full(n, W[r] / (n * per_row) if n else 0.0) for r, n in enumerate(sizes)])
    return a.reshape((-1,) + (1,) * (np.ndim(x) - 1))


def per_replica_state(expectation: "Expectation", replicas: int) -> None:
    """Give every state observable of ``expectation`` one identical row per
    replica (value, magnitude, spread broadcast to ``(R, *shape)``): after
    every step, every replica must hold the same running statistics and
    parameters (in place)."""
    from .catalogue import STATE_OBSERVABLES

    for key, e in list(expectation.values.items()):
        if key[1] in STATE_OBSERVABLES:
            rows = lambda a: None if a is None else np.broadcast_to(a, (replicas,) + np.shape(a)).copy()  # noqa: E731
            expectation.values[key] = Expected(rows(e.value), rows(e.magnitude), rows(e.spread))


def pre_forward(kind: str, x, weight, bias=None) -> tuple[np.ndarray, np.ndarray]:
    """The layer before the BatchNorm of a composite case (``catalogue.PreLayer``),
    in float64: returns ``(z, magnitude)``, both shaped like the BatchNorm input.

    ``kind="linear"``: ``x`` (N, C_in), ``weight`` (C_out, C_in): ``z = x W^T + b``
    (``torch.nn.Linear``; ONNX ``Gemm`` with ``transB=1``).
    ``kind="conv"``: ``x`` (N, C_in, *S), ``weight`` (C_out, C_in, *K) with odd
    K: ``z[n, o, p] = sum_{c, k} W[o, c, k] xpad[n, c, p + k] + b[o]``, a
    cross-correlation (no kernel flip: ``torch.nn.functional.conv2d``, ONNX
    ``Conv``) with stride 1 and zero padding ``(K - 1) / 2``, so z has x's
    spatial shape. ``bias``: (C_out,) or None.

    ``magnitude`` is the same computation on ``|x|``, ``|W|``, ``|b|`` (the
    running-error magnitude of the dot products, Higham 2002 sec. 3.1): a
    dot product of K terms in unit roundoff u errs by at most ``~u sqrt(K)``
    times it (the probabilistic model of :mod:`bnconform.compare`).
    """
    x, w = np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    b = None if bias is None else np.asarray(bias, dtype=np.float64)

    def apply(xv, wv, bv):
        if kind == "linear":
            out = xv @ wv.T
            return out if bv is None else out + bv
        k = wv.shape[2:]
        pads = [(0, 0), (0, 0)] + [((kk - 1) // 2, (kk - 1) // 2) for kk in k]
        win = np.lib.stride_tricks.sliding_window_view(np.pad(xv, pads), k, axis=tuple(range(2, xv.ndim)))
        # win: (N, C_in, *S, *K) -> sum over C_in and K against W (C_out, C_in, *K)
        sp = xv.ndim - 2
        letters = "defgh"[:sp]
        kl = "pqrst"[:sp]
        out = np.einsum(f"nc{letters}{kl},oc{kl}->no{letters}", win, wv, optimize=True)
        return out if bv is None else out + channel_view(bv, out.ndim, 1)

    return apply(x, w, b), apply(np.abs(x), np.abs(w), None if b is None else np.abs(b))


# ---------------------------------------------------------------- precision

def unit_roundoff(dtype: str) -> float:
    """Unit roundoff ``u`` of a dtype name (``UNIT_ROUNDOFF``); ``KeyError`` for an unknown one."""
    return UNIT_ROUNDOFF[dtype]


def _round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` (bfloat16 held in float32, as in :mod:`bnconform.arrays`)."""
    if dtype == "bfloat16":
        from .arrays import round_bfloat16

        return round_bfloat16(a)
    return np.asarray(a).astype(np.dtype(dtype))


def one_pass_variance(x: np.ndarray, axis: int, dtype: str, clamped: bool) -> np.ndarray:
    """The one-pass batch variance ``E[x^2] - E[x]^2`` EMULATED in ``dtype``.

    ``x``: shape ``(N, C, *)`` (channel at ``axis``), any float dtype; the values
    are rounded to ``dtype``, squared, summed over the reduced axes and divided
    by ``m`` in ``dtype`` (NumPy's summation order: one legitimate
    implementation of the formula among many). ``clamped`` applies
    ``max(., 0)`` (Flax ``_compute_stats``; Keras ``_compute_moments_sync``).
    Returns the (C,) variance as float64; NaN for an empty batch.
    """
    axes = reduce_axes(np.ndim(x), axis)
    xe = _round_to(np.asarray(x, dtype=np.float64), dtype)
    calc = xe.dtype
    m = int(np.prod([np.shape(x)[a] for a in axes])) if axes else 1
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s1 = _round_to(xe.sum(axis=axes, dtype=calc), dtype)
        s2 = _round_to((xe * xe).astype(calc).sum(axis=axes, dtype=calc), dtype)
        mean = _round_to(s1 / calc.type(m), dtype) if m else np.full(s1.shape, np.nan, calc)
        mean2 = _round_to(s2 / calc.type(m), dtype) if m else np.full(s1.shape, np.nan, calc)
        var = _round_to(mean2 - _round_to(mean * mean, dtype), dtype)
        if clamped:
            var = np.where(np.isnan(var), var, np.maximum(var, 0))
    return np.asarray(var, dtype=np.float64)


def one_pass_error_bound(x: np.ndarray, axis: int, u: float) -> np.ndarray:
    """A priori bound on ``|fl(E[x^2] - E[x]^2) - var|`` in unit roundoff ``u``; (C,) float64.

    Running error analysis of the one-pass formula (Higham 2002, sec. 1.9 and
    ch. 3/4; sqrt(m) is the probabilistic growth of a sum of m terms, sec.
    4.2, the model :mod:`bnconform.compare` uses everywhere):

    * ``fl(E[x^2]) = E[x^2](1 + t1)``, ``|t1| <= u (sqrt(m) + 2)`` (square,
      sum, divide);
    * ``fl(E[x]) = E[x] + e``, ``|e| <= u (sqrt(m) + 1) E|x|``, so
      ``|fl(E[x]^2) - E[x]^2| <= 2 |E[x]| |e| + u E[x]^2``;
    * the subtraction adds ``u |var|``; ``E[x]^2 + var = E[x^2]``.

    Summed, the bound returned (first order in u; the SAFETY factor of the
    tolerance model is applied by :func:`simulate`, as :mod:`bnconform.compare`
    applies it to every other bound)::

        u (sqrt(m) + 3) E[x^2] + 2 u (sqrt(m) + 1) |E[x]| E|x|

    Against the two-pass bound ``~ u sqrt(m) (var + 2 sqrt(var) E|x|)`` the
    ratio grows like ``E[x]^2 / var``: the condition number of the one-pass
    formula. No constant here is fitted to any framework.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim, axis)
    m = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ex2, mu, eabs = (x * x).mean(axis=axes), x.mean(axis=axes), np.abs(x).mean(axis=axes)
    root = np.sqrt(max(m, 1))
    return u * ((root + 3.0) * ex2 + 2.0 * (root + 1.0) * np.abs(mu) * eabs)


def _invstd(v, eps):
    """``1/sqrt(v + eps)`` with ``inf`` where ``v + eps <= 0`` (no bound: the
    division is undefined there)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.asarray(v, dtype=np.float64) + eps
        s = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), np.inf)
        return np.where(np.isnan(d), np.nan, s)  # NaN statistics (NaN input) stay NaN


def _mul(a, b):
    """Elementwise product with ``0 * inf = 0`` (a zero factor bounds nothing away)."""
    with np.errstate(invalid="ignore"):
        return np.where((a == 0) | (b == 0), 0.0, a * b)


# ---------------------------------------------------------------- simulation

@dataclass
class Expected:
    """Expected value of one observable after one step, float64, with its
    magnitude (same shape; 0 means the value must be exact).

    ``spread``: None (canonical), or an ABSOLUTE envelope (same shape, >= 0,
    ``inf`` where the profile's algorithm bounds nothing) that the profile's
    precision knobs add to the tolerance (see :func:`simulate`).
    """

    value: np.ndarray
    magnitude: np.ndarray
    spread: np.ndarray | None = None


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
    # Precision envelope of the forward (precision profiles only): the
    # variance used, as a _VarInterval, and the spread of the mean used.
    var_iv: "_VarInterval | None" = None
    mean_spread: np.ndarray | None = None
    mean_model: np.ndarray | None = None
    #: ``np.abs(x)`` where already computed (None for a composite case, whose forward
    #: magnitude is the preceding layer's, not |x|).
    x_abs: np.ndarray | None = None


def _mean_mag(mean: np.ndarray, abs_mean: np.ndarray, batch: bool) -> np.ndarray:
    """Running-error magnitude of the mean a forward subtracts: ``mean(|x|)`` for a
    batch mean (the magnitude of its sum, Higham 2002 sec. 4.2), ``|mean|`` for the
    running mean (a stored value)."""
    if not batch:
        return np.abs(mean)
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(abs_mean), np.abs(mean), np.maximum(abs_mean, np.abs(mean)))


@dataclass
class _VarInterval:
    """A per-channel variance ``v`` (C,) known to lie in ``[v - lo0, v + hi0]``
    by the error MODEL and in ``[v - loS, v + hiS]`` with the SAFETY factor
    applied; ``clamped``: the algorithm clamps at 0 (no lower end below 0,
    and at 0 the variance's gradient path may be cut)."""

    v: np.ndarray
    lo0: np.ndarray
    hi0: np.ndarray
    loS: np.ndarray
    hiS: np.ndarray
    clamped: bool = False

    def s_range(self, eps: float, safety: bool):
        """``(s_c, s_lo, s_hi, clamp)``: ``s = 1/sqrt(var + eps)`` at the centre and
        over the interval (``inf`` where it reaches ``var + eps <= 0``), and
        whether the interval reaches 0 under a clamp."""
        lo, hi = (self.loS, self.hiS) if safety else (self.lo0, self.hi0)
        bottom = self.v - lo
        if self.clamped:
            bottom = np.maximum(bottom, 0.0)
        clamp = np.asarray(self.clamped & (bottom <= 0))
        return _invstd(self.v, eps), _invstd(self.v + hi, eps), _invstd(bottom, eps), clamp

    def envelope(self, eps: float, dev_top):
        """Spread of a quantity ``q(s)`` over the interval: ``dev_top(s_c, s_lo,
        s_hi, clamp) -> (max |q(s) - q(s_c)|, max |q(s)|)``. Returns ``(spread,
        top, unbounded)`` with ``spread = max(SAFETY * dev(model interval),
        dev(SAFETY interval))``: the tolerance convention (SAFETY times the
        model bound) in the quantity's own space, and never less than the image
        of the SAFETY-widened variance interval (``q`` is not linear in the
        variance: ``s`` is convex in it). ``top`` over the SAFETY interval;
        ``unbounded`` where that interval reaches ``var + eps <= 0``."""
        s_c, lo0, hi0, cl0 = self.s_range(eps, False)
        _, loS, hiS, clS = self.s_range(eps, True)
        dev0, _ = dev_top(s_c, lo0, hi0, cl0)
        devS, top = dev_top(s_c, loS, hiS, clS)
        unbounded = np.isinf(hiS) | np.isinf(s_c)
        with np.errstate(invalid="ignore"):
            return np.maximum(SAFETY * dev0, devS), top, unbounded


def _s_dev_top(s_c, s_lo, s_hi, clamp):
    """``q(s) = s``: its deviation and maximum over ``[s_lo, s_hi]``."""
    with np.errstate(invalid="ignore"):
        return np.maximum(s_hi - s_c, s_c - s_lo), s_hi


def _s3_dev_top(s_c, s_lo, s_hi, clamp):
    """``q(s) = s^3``: its deviation and maximum over ``[s_lo, s_hi]``."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.maximum(s_hi**3 - s_c**3, s_c**3 - s_lo**3), s_hi**3


def _range_of_cubic(A, C, s_c, s_lo, s_hi, extra=None):
    """Elementwise ``h(s) = A s - C s^3`` over ``s in [s_lo, s_hi]``: returns
    ``(max |h(s) - h(s_c)|, max |h(s)|)``. A cubic's extremes on an interval
    lie at its ends or at the critical point ``s* = sqrt(A / (3 C))``;
    ``extra`` adds candidate values (the clamped-gradient branch)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        h = lambda s: A * s - C * s**3  # noqa: E731
        hc = h(s_c)
        ratio = np.where(C != 0, A / (3.0 * np.where(C != 0, C, 1.0)), -1.0)
        star = np.sqrt(np.where(ratio > 0, ratio, 0.0))
        inside = (ratio > 0) & (star >= s_lo) & (star <= s_hi)
        cands = [h(s_lo), h(s_hi), np.where(inside, h(star), hc)] + ([extra] if extra is not None else [])
        dev = np.max([np.abs(c - hc) for c in cands], axis=0)
        top = np.max([np.abs(c) for c in cands] + [np.abs(hc)], axis=0)
    return dev, top


def simulate(case: Case, arrays: CaseArrays, profile: Profile = CANONICAL) -> Expectation:
    """Replay ``case.steps`` on one float64 layer and return what every
    observable should be after every step.

    Inputs are ``arrays`` (the cast values every adapter receives), promoted to
    float64. Raises :class:`OracleUndefined` where the semantics are undefined.

    Precision profiles (``variance_algorithm``, ``compute_dtype``,
    ``accumulation_dtype``, ``summation``, ``ema_form``) add to each observable an absolute ``spread``,
    the envelope within which an implementation of that algorithm may
    legitimately land, derived as follows (nothing fitted):

    * one-pass variance: the centre is :func:`one_pass_variance` emulated in
      the compute dtype (float32 for float32/half cases, float64 for float64,
      or a narrower ``compute_dtype``). The framework's variance lies within
      ``d0 = B + |emulated - exact|`` of it by the error MODEL (``B`` from
      :func:`one_pass_error_bound`: the framework's own rounding; the second
      term the emulation's actual error, known since the exact variance is at
      hand), and within ``dS = SAFETY B + |emulated - exact|`` with the
      tolerance model's SAFETY factor. Both intervals (lower end clamped at 0
      for ``one_pass_clamped``) are propagated WITHOUT linearisation, so the
      envelope stays valid where the uncertainty is comparable to
      ``var + eps``: ``s = 1/sqrt(var + eps)`` ranges over each interval's
      image; the output ``w (x - mean) s + b`` is monotone in ``s``; the input
      gradient ``w (A s - C s^3)`` (``A = g - mean(g)``, ``C = (x - mean)
      mean(g (x - mean))``) takes its extremes at the ends or at its critical
      point; ``grad_weight = s sum(g (x - mean))`` is linear in ``s``. Where
      the clamp may be active, the gradient with the variance's path cut
      (``w A / sqrt(eps)``: the derivative of ``max(., 0)`` is 0 below 0) is
      a candidate too. The spread of a quantity is ``max(SAFETY * deviation
      over the model interval, deviation over the SAFETY interval)``: SAFETY
      times the model bound, as :mod:`bnconform.compare` does for every other
      bound, measured in the quantity's own space (so a framework at a
      clamped END of the interval — variance 0, output ``(x - mean) /
      sqrt(eps)`` — still has headroom SAFETY), and never less than the image
      of the SAFETY-widened variance (``s`` is convex in the variance: a
      deviation below the centre grows faster than linearly). Unclamped, a
      SAFETY interval reaching ``var + eps <= 0`` bounds nothing (``inf``:
      the framework may return any value there, NaN included). The running
      variance carries both intervals through the moving average, so later
      eval outputs and global-statistics gradients use their image; SGD
      passes ``lr * spread(grad)`` on to the parameters, whose spread enters
      later outputs by the triangle inequality (``|w s - w0 s0| <= |w0| |s -
      s0| + dw max s``).
    * ``ema_form: subtract``: each running update adds ``SAFETY 3 u |f|
      |running - batch|`` (the roundings of ``running -= (running - batch)
      * c`` counted in the Profile docstring) to the running statistic's
      envelope, which carries earlier updates as ``(1 - f) spread``; later
      eval outputs and global-statistics gradients use its image as for any
      running-variance envelope.
    * ``compute_dtype`` / ``accumulation_dtype`` (dtype ``c`` narrower than
      the default): an observable produced at ``c`` gets the tolerance the
      :mod:`bnconform.compare` model gives a computation in ``c``,
      ``SAFETY u_c (sqrt(m) magnitude + |value|)``; running statistics
      accumulate it through the moving average (``(1 - f) spread + f ...``).
      The centre stays the float64 value (the tolerance covers the rounding
      of inputs to ``c``: magnitudes include ``|x|``).

    The canonical profile computes none of this (``spread`` is None).

    Replica cases (``case.replicas``, synchronized BatchNorm): the batch
    statistics of a training forward are :func:`replica_batch_stats` of the
    replicas' slices, its gradients :func:`replica_backward` (per-replica
    partial sums reduced across replicas); the running update uses the
    GLOBAL count ``m`` in Bessel's correction (the union of the replicas'
    values is the batch; PyTorch ``_functions.py`` passes the gathered
    ``count_all`` to ``batch_norm_gather_stats_with_counts``, which updates
    ``running_var`` with ``var * n / (n - 1)`` for the global ``n``). Every
    state observable is expected once per replica, identical
    (:func:`per_replica_state`, shape ``(R, C)``). A one-pass
    ``variance_algorithm`` is emulated on the global batch, which is exact for
    ``count_weighted`` (a sum is a sum, whatever the replicas' summation order the
    bound covers) but not for ``replica_average``: that combination raises
    ``ValueError`` (not modelled).
    """
    if profile.moments_count_offset and (case.replicas is not None or profile.variance_algorithm != "two_pass"):
        raise ValueError(f"profile {profile.name!r}: moments_count_offset with "
                         + ("a replica case" if case.replicas is not None else
                            f"variance_algorithm={profile.variance_algorithm!r}") + " is not modelled")
    if (case.replicas is not None and profile.replica_reduction != "count_weighted"
            and profile.variance_algorithm != "two_pass"):
        raise ValueError(f"profile {profile.name!r}: a one-pass variance with replica_reduction="
                         f"{profile.replica_reduction!r} is not modelled")
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

    # ---- precision envelope state (precision profiles only)
    prec = profile.models_precision
    dtype_in = case.input.dtype
    default_acc = ACCUMULATION_DTYPE[dtype_in]

    def narrower(dt: str) -> str | None:
        """``dt`` resolved (``"input"``) if it is narrower than the default accumulation dtype."""
        dt = dtype_in if dt == "input" else dt
        return dt if dt != "default" and UNIT_ROUNDOFF[dt] > UNIT_ROUNDOFF[default_acc] else None

    compute = narrower(profile.compute_dtype)
    overrides = {o: narrower(d) for o, d in profile.accumulation_dtype}
    emu_dtype = compute or default_acc
    growth = np.sqrt(max(m, 1))

    def u_of(observable: str) -> float:
        """Unit roundoff of the precision ``observable`` is produced in, 0 when it is the default."""
        dt = overrides.get(observable) or compute
        return UNIT_ROUNDOFF[dt] if dt else 0.0

    #: ``summation: recursive``: the deterministic bound (m - 1) u of one sequential
    #: accumulator per channel, u of the default accumulation dtype (Higham 2002 eq. (4.4)).
    u_lin = UNIT_ROUNDOFF[default_acc] * max(m - 1, 0) if profile.summation == "recursive" else 0.0

    def b_spread(observable, value, magnitude):
        """Spread of an observable produced at an overridden precision or reduced by a
        recursive sum (0 otherwise)."""
        u = u_of(observable)
        spread = SAFETY * u * (growth * np.abs(magnitude) + np.abs(value)) if u else 0.0
        return spread + SAFETY * u_lin * np.abs(magnitude) if u_lin else spread

    def subtract_form(observable, diff, factor):
        """``ema_form: subtract``: SAFETY times the roundings (1)-(3) of ``running -= (running -
        batch) * c`` in the running statistic's dtype, ``3 u |f| |running - batch|`` (Profile
        docstring); 0 for the canonical interpolation."""
        if profile.ema_form != "subtract":
            return 0.0
        u = u_of(observable) or UNIT_ROUNDOFF[default_acc]
        with np.errstate(invalid="ignore"):
            return SAFETY * EMA_SUBTRACT_ROUNDINGS * u * abs(factor) * np.abs(diff)

    zeros = lambda: np.zeros(L.num_features)  # noqa: E731
    # The running variance's interval as offsets below/above its value (model and SAFETY;
    # exactly 0 without spreads).
    rv_off = {k: zeros() for k in ("lo0", "hi0", "loS", "hiS")}
    sp = {"running_mean": zeros(), "weight": zeros(), "bias": zeros()}  # symmetric spreads

    def spread_of(arr):
        a = np.asarray(arr, dtype=np.float64)
        return np.where(np.isnan(a), 0.0, a)

    def apply_update(mean, var, abs_mean, mag_var, var_iv=None):
        nonlocal rm, rv, nbt
        nbt += 1
        if profile.running_update == "lost":  # computed, written into a temporary, discarded
            return
        if m == 0:  # an empty batch carries no statistics
            if profile.empty_batch_update == "skip":  # counted, nothing averaged in
                return
            fill = np.nan if profile.empty_batch_update == "nan" else 0.0
            mean = var = np.full(L.num_features, fill)
            var_iv = None
            abs_mean = mag_var = np.zeros(L.num_features)
        if L.momentum is None:
            if not profile.cumulative_average:
                raise OracleUndefined("momentum=None (cumulative average) is not defined in this profile")
            factor = 1.0 / nbt
        else:
            factor = L.momentum
        if m == 0:  # "nan"/"zero": no Bessel factor exists for m = 0; 0 and NaN need none
            pop, corr = var, 1.0
        else:
            pop = population_variance(var, m, profile.running_var_correction)
            corr = m / (m - 1) if profile.running_var_correction == "unbiased" else 1.0
        rm_old, rv_old = rm, rv
        rm, rv = ema(rm, mean, factor), ema(rv, pop, factor)
        mag["running_mean"] = (1 - factor) * mag["running_mean"] + factor * abs_mean
        mag["running_var"] = (1 - factor) * mag["running_var"] + factor * corr * mag_var
        if prec:
            u_rm, u_rv = u_of("running_mean"), u_of("running_var")
            sp["running_mean"] = ((1 - factor) * sp["running_mean"]
                                  + SAFETY * u_rm * (factor * growth * abs_mean + np.abs(rm))
                                  + SAFETY * u_lin * factor * abs_mean
                                  + subtract_form("running_mean", rm_old - mean, factor))
            extra = (SAFETY * u_rv * (factor * corr * growth * np.abs(mag_var) + np.abs(rv))
                     + SAFETY * u_lin * factor * corr * np.abs(mag_var)
                     + subtract_form("running_var", rv_old - pop, factor))
            for k in rv_off:
                batch_off = getattr(var_iv, k) if var_iv is not None else 0.0
                if k.startswith("lo") and var_iv is not None and var_iv.clamped:
                    batch_off = np.minimum(batch_off, np.maximum(var, 0.0))  # the clamp bounds it below
                rv_off[k] = ((1 - factor) * rv_off[k] + factor * corr * batch_off
                             + (extra if k.endswith("S") else extra / SAFETY))

    def effective_gamma():
        """The gamma the kernel uses and its magnitude (1 when gamma is fixed)."""
        return (np.ones_like(w), np.ones_like(w)) if profile.fixed_gamma else (w, mag["weight"])

    def put(i, name, value, magnitude, spread=None):
        if prec:
            spread = np.broadcast_to(spread_of(0.0 if spread is None else spread), np.shape(value)).copy()
        out.values[(i, name)] = Expected(value, magnitude, spread if prec else None)

    # A batch's float64 values and their absolute values, converted once per batch (a
    # program's forwards often reuse a batch: train then eval on the same values).
    promoted: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, step in enumerate(case.steps):
        if isinstance(step, Forward):
            if step.batch not in promoted:
                x = np.asarray(arrays.batches[step.batch], dtype=np.float64)
                promoted[step.batch] = x, np.abs(x)
            x, x_abs = promoted[step.batch]
            x_plain_abs = x_abs
            if case.pre is not None:  # composite: the BatchNorm sees the preceding layer's output
                x, x_abs = pre_forward(case.pre.kind, x, arrays.pre["weight"], arrays.pre.get("bias"))
                x_plain_abs = None
            axes = reduce_axes(ndim, axis)
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                abs_mean = x_abs.mean(axis=axes)
            as_train = step.mode == "train" and profile.train_statistics == "batch"
            use_batch = as_train or not L.track_running_stats
            var_iv = None
            if use_batch:
                if case.replicas is None and profile.moments_count_offset and m > 0:
                    mean, var = offset_batch_stats(x, axis, profile.moments_count_offset)
                elif case.replicas is None:
                    mean, var = batch_stats(x, axis)  # NaN for an empty batch; the output is empty
                else:  # synchronized over replicas: per-replica partials reduced across replicas
                    mean, var = replica_batch_stats(x, axis, case.replicas, profile.replica_reduction)
                # Two-pass variance: rounding of (x - mean) costs ~u*|x| per term.
                mag_var = var + 2.0 * np.sqrt(var) * abs_mean
                if profile.variance_algorithm != "two_pass" and m > 0:
                    clamped = profile.variance_algorithm == "one_pass_clamped"
                    exact = var
                    var = one_pass_variance(x, axis, emu_dtype, clamped)
                    bound = one_pass_error_bound(x, axis, UNIT_ROUNDOFF[emu_dtype])
                    with np.errstate(invalid="ignore"):
                        known = np.abs(var - exact)  # the emulation's own, known error
                    var_iv = _VarInterval(var, bound + known, bound + known, SAFETY * bound + known,
                                          SAFETY * bound + known, clamped)
            else:
                mean, var, mag_var = rm.copy(), rv.copy(), None
                if profile.eval_zero_debias and nbt > 0 and L.momentum is not None:
                    scale = 1.0 - (1.0 - L.momentum) ** nbt
                    mean, var = mean / scale, var / scale
            last = _Forward(x, use_batch, mean, var, abs_mean, x_abs=x_plain_abs)
            rm0, rv0 = rm.copy(), rv.copy()
            if as_train and L.track_running_stats:
                if profile.update_at == "forward":
                    apply_update(mean, var, abs_mean, mag_var, var_iv)
                else:
                    last.pending = (mean, var, abs_mean, mag_var, var_iv)
            gamma, gamma_mag = effective_gamma()
            beta, beta_mag = b, mag["bias"]
            if profile.aliased_affine_update and use_batch and m > 0 and L.momentum is not None:
                # The updated running statistics overwrite a gamma / beta that held equal values.
                new = {"rv": ema(rv0, population_variance(var, m, profile.running_var_correction), L.momentum),
                       "rm": ema(rm0, mean, L.momentum)}

                def aliased(p):
                    return new["rv"] if np.array_equal(p, rv0) else new["rm"] if np.array_equal(p, rm0) else p

                gamma, beta = aliased(gamma), aliased(b)
                gamma_mag, beta_mag = np.maximum(gamma_mag, np.abs(gamma)), np.maximum(beta_mag, np.abs(beta))
            with np.errstate(invalid="ignore", divide="ignore"):
                y = normalize(x, mean, var, L.eps, gamma, beta, axis)
                invstd = 1.0 / np.sqrt(var + L.eps)
                # mag["weight"] >= |w|: it carries the rounding history of gamma (SGD
                # updates that cancel leave a small gamma with an absolute error). The
                # mean's magnitude: a batch mean is a sum, whose running-error magnitude is
                # mean(|x|) (Higham 2002, sec. 4.2; found by `bnconform explore`: with |mean|,
                # an element near a near-zero mean had no room for the mean's rounding).
                # cv(gamma_mag * invstd) * (x_abs + cv(mean magnitude)) + cv(beta_mag), in place.
                y_mag = x_abs + cv(_mean_mag(mean, abs_mean, use_batch))
                np.multiply(cv(gamma_mag * invstd), y_mag, out=y_mag)   # this operand order: NaN payloads too
                y_mag += cv(beta_mag)
            y_sp = None
            if prec:
                if use_batch:
                    if var_iv is None:  # two-pass: the variance carries no envelope of its own
                        var_iv = _VarInterval(var, zeros(), zeros(), zeros(), zeros())
                    mean_sp = zeros()
                    # The batch mean's model error u (sqrt(m) + 1) E|x| (see one_pass_error_bound):
                    # the base tolerance covers it at the centre's 1/sqrt(var + eps), not over the
                    # variance's range, where (x - mean) s moves by |d mean| |s - s_c| more.
                    mean_model = UNIT_ROUNDOFF[emu_dtype] * (growth + 1.0) * abs_mean
                else:
                    var_iv = _VarInterval(var, rv_off["lo0"].copy(), rv_off["hi0"].copy(), rv_off["loS"].copy(),
                                          rv_off["hiS"].copy())
                    mean_sp, mean_model = sp["running_mean"].copy(), zeros()
                last.var_iv, last.mean_spread, last.mean_model = var_iv, mean_sp, mean_model
                w_sp = zeros() if profile.fixed_gamma else sp["weight"]
                ds, s_top, unbounded = var_iv.envelope(L.eps, _s_dev_top)
                with np.errstate(invalid="ignore", over="ignore"):
                    xm = np.abs(x - cv(mean))
                    y_sp = (_mul(xm, cv(np.abs(gamma) * ds + _mul(w_sp, s_top))) + cv(sp["bias"])
                            + cv(_mul(np.abs(gamma) * mean_sp, s_top)) + cv(_mul(np.abs(gamma) * mean_model, ds)))
                    y_sp = np.where(cv(unbounded), np.inf, y_sp)
                y_sp = y_sp + b_spread("output", y, y_mag)
                if u_lin and use_batch:  # the recursive sum's batch mean, (m - 1) u E|x|, moves x - mean
                    with np.errstate(invalid="ignore", over="ignore"):
                        y_sp = y_sp + cv(SAFETY * u_lin * np.abs(gamma) * invstd * abs_mean)
            put(i, "output", y, y_mag, y_sp)
        elif isinstance(step, Backward):
            assert last is not None  # guaranteed by catalogue validation
            g = np.asarray(arrays.grad_outputs[i], dtype=np.float64)
            if not last.used_batch:
                fn = backward_global_stats
            elif profile.moments_count_offset and m > 0:
                fn = functools.partial(backward_offset_batch_stats, offset=profile.moments_count_offset)
            else:
                fn = backward_batch_stats
            axes = reduce_axes(ndim, axis)
            gamma, gamma_mag = effective_gamma()
            with np.errstate(invalid="ignore", divide="ignore"):
                if case.replicas is not None and last.used_batch:
                    dx, dw, db = replica_backward(g, last.x, last.mean, last.var, L.eps, gamma, axis,
                                                  case.replicas, profile.replica_reduction)
                    a = replica_grad_weights(last.x, axis, case.replicas, profile.replica_reduction)
                else:
                    dx, dw, db = fn(g, last.x, last.mean, last.var, L.eps, gamma, axis)
                    a = 1.0 / max(m, 1)  # the weight of one value in the batch mean
                invstd = 1.0 / np.sqrt(last.var + L.eps)
                # The magnitudes, each operation as in the written formulas and in their order, with
                # |g|, |x| and |g| * xh_mag formed once and the elementwise chains in place.
                x_abs = np.abs(last.x) if last.x_abs is None else last.x_abs
                xh_mag = x_abs + cv(_mean_mag(last.mean, last.abs_mean, last.used_batch))
                xh_mag *= cv(invstd)
                g_abs = np.abs(g)
                gxh = g_abs * xh_mag
                dw_mag, db_mag = gxh.sum(axis=axes), g_abs.sum(axis=axes)
                if last.used_batch and case.replicas is not None:  # a: one value's weight in the mean
                    dx_mag = cv(gamma_mag * invstd) * (g_abs + a * g_abs.sum(axis=axes, keepdims=True)
                                                       + xh_mag * a * gxh.sum(axis=axes, keepdims=True))
                elif last.used_batch:
                    # cv(gamma_mag * invstd) * (|g| + mean(|g|) + xh_mag * mean(|g| xh_mag))
                    gxh_mean = gxh.mean(axis=axes, keepdims=True)
                    dx_mag = g_abs + g_abs.mean(axis=axes, keepdims=True)
                    dx_mag += np.multiply(xh_mag, gxh_mean, out=gxh)
                    np.multiply(cv(gamma_mag * invstd), dx_mag, out=dx_mag)
                else:
                    dx_mag = cv(gamma_mag * invstd) * g_abs
                if profile.fixed_gamma:  # the gradient of a fixed gamma is 0, exactly
                    dw, dw_mag = np.zeros_like(dw), np.zeros_like(dw_mag)
                elif m == 0 and last.used_batch and profile.empty_batch_grad_weight == "nan":
                    dw = np.full_like(dw, np.nan)
            dx_sp = dw_sp = db_sp = None
            if prec:
                w_sp = zeros() if profile.fixed_gamma else sp["weight"]
                iv = last.var_iv
                ds, s_top, unbounded = iv.envelope(L.eps, _s_dev_top)
                with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                    xm = last.x - cv(last.mean)
                    if last.used_batch:
                        A = g - g.mean(axis=axes, keepdims=True)
                        C = xm * (g * xm).mean(axis=axes, keepdims=True)

                        def cubic(s_c, s_lo, s_hi, clamp):
                            # Where the clamp may be active, the variance's gradient path is cut:
                            # A / sqrt(0 + eps) is a candidate (elsewhere h(s_c) adds nothing).
                            cut = (np.where(cv(clamp), A * cv(s_hi), A * cv(s_c) - C * cv(s_c)**3)
                                   if np.any(clamp) else None)
                            return _range_of_cubic(A, C, cv(s_c), cv(s_lo), cv(s_hi), cut)

                        dev, top, _ = iv.envelope(L.eps, cubic)
                        # The mean's model error d moves C = (x - mean) mean(g (x - mean)) by at most
                        # d (|mean(g (x - mean))| + |x - mean| |mean(g)|) + d^2 |mean(g)| (exact:
                        # C is quadratic in the mean), over the s^3 range.
                        ds3, _, _ = iv.envelope(L.eps, _s3_dev_top)
                        d, gbar = cv(last.mean_model), np.abs(g.mean(axis=axes, keepdims=True))
                        dC = d * (np.abs((g * xm).mean(axis=axes, keepdims=True)) + np.abs(xm) * gbar) + d * d * gbar
                        dx_sp = (_mul(cv(np.abs(gamma)), dev) + _mul(cv(w_sp), top)
                                 + _mul(cv(np.abs(gamma)), _mul(dC, cv(ds3))))
                    else:
                        dx_sp = _mul(np.abs(g), cv(np.abs(gamma) * ds + _mul(w_sp, s_top)))
                    dx_sp = np.where(cv(unbounded), np.inf, dx_sp)
                    sgx = np.abs((g * xm).sum(axis=axes))
                    dw_sp = (_mul(sgx, ds) + _mul(np.abs(g.sum(axis=axes)) * last.mean_spread, s_top)
                             + _mul(np.abs(g.sum(axis=axes)) * last.mean_model, ds))
                    dw_sp = np.where(unbounded, np.inf, dw_sp)
                    if profile.fixed_gamma:
                        dw_sp = zeros()
                db_sp = b_spread("grad_bias", db, db_mag)
                dx_sp = dx_sp + b_spread("grad_input", dx, dx_mag)
                if not profile.fixed_gamma:
                    dw_sp = dw_sp + b_spread("grad_weight", dw, dw_mag)
            put(i, "grad_input", dx, dx_mag, dx_sp)
            if L.affine:
                grads = {"weight": (dw, dw_mag, dw_sp), "bias": (db, db_mag, db_sp)}
                for name, (v, vm, vs) in grads.items():
                    if name not in L.frozen:
                        put(i, f"grad_{name}", v, vm, vs)
            if last.pending is not None:
                apply_update(*last.pending)
                if profile.update_at != "each_backward":  # each_backward: every backward re-applies it
                    last.pending = None
        elif isinstance(step, SgdStep):
            if L.affine:
                lr = step.lr if profile.sgd_lr_dtype == "float64" else float(np.float32(step.lr))
                for name, (grad, grad_mag, grad_sp) in grads.items():
                    if name in L.frozen:
                        if profile.frozen_update == "zero_lr":  # w - 0 g: NaN where g is not finite
                            with np.errstate(invalid="ignore"):
                                if name == "weight":
                                    w = w - 0.0 * grad
                                else:
                                    b = b - 0.0 * grad
                        continue
                    if name == "weight":
                        w = w - lr * grad
                    else:
                        b = b - lr * grad
                    mag[name] = mag[name] + lr * grad_mag
                    if prec:
                        sp[name] = sp[name] + lr * grad_sp
        # State observables after every step.
        if L.track_running_stats:
            put(i, "running_mean", rm.copy(), mag["running_mean"].copy(), sp["running_mean"].copy())
            rv_sp = None
            if prec:
                rv_sp = np.maximum(np.maximum(rv_off["lo0"], rv_off["hi0"]) * SAFETY,
                                   np.maximum(rv_off["loS"], rv_off["hiS"]))
            put(i, "running_var", rv.copy(), mag["running_var"].copy(), rv_sp)
            put(i, "num_batches_tracked", np.asarray(float(nbt)), np.asarray(0.0))
        if L.affine:
            put(i, "weight", w.copy(), mag["weight"].copy(), sp["weight"].copy())
            put(i, "bias", b.copy(), mag["bias"].copy(), sp["bias"].copy())
    if case.replicas is not None:
        per_replica_state(out, len(case.replicas))
        if profile.empty_replica_update == "skip" and 0 in case.replicas:
            empty = [r for r, n in enumerate(case.replicas) if n == 0]
            for (i, name), e in out.values.items():
                if name in ("running_mean", "running_var"):
                    init = np.asarray(arrays.init[name], dtype=np.float64)
                    e.value[empty], e.magnitude[empty] = init, np.abs(init)
                    if e.spread is not None:
                        e.spread[empty] = 0.0
    return out
