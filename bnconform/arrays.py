"""Seeded input generation: every adapter and the oracle see identical values.

Values are drawn in float64 with ``numpy.random.default_rng`` and cast to the
case dtype; the oracle consumes the CAST values (promoted back to float64), so
input rounding is never counted as framework error.

Storage dtypes: ``float64`` -> numpy float64, ``float32`` -> float32,
``float16`` -> float16. ``bfloat16`` has no NumPy dtype: values are rounded to
bfloat16 (round-to-nearest-even on the top 16 bits of float32) and stored as
float32; adapters convert them to their framework's bfloat16 exactly.
Parameters and running statistics are float64 for float64 cases and float32
otherwise (frameworks keep BN statistics in float32 for half inputs).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalogue import Backward, Case, Distribution, Forward

# Stream ids for the seeded generators: (case seed, stream, index).
_STREAM_INPUT, _STREAM_GRAD, _STREAM_PARAM = 0, 1, 2
_STREAM_PRE = 3  # the preceding layer of a composite case: index 0 weight, 1 bias
_PARAM_INDEX = {"running_mean": 0, "running_var": 1, "weight": 2, "bias": 3}


def round_bfloat16(a: np.ndarray) -> np.ndarray:
    """Round float values to the nearest bfloat16 (ties to even); returns float32.

    NaN stays NaN. Source: the bfloat16 format is the top 16 bits of IEEE-754
    binary32.
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    out = rounded.view(np.float32).copy()
    out[np.isnan(a)] = np.nan
    return out


def cast(a: np.ndarray, dtype: str) -> np.ndarray:
    """Cast float64 values to the storage dtype named by the catalogue."""
    if dtype == "bfloat16":
        return round_bfloat16(a)
    return np.asarray(a, dtype=np.dtype(dtype))


def param_dtype(dtype: str) -> str:
    """Storage dtype of parameters/statistics for an input dtype."""
    return "float64" if dtype == "float64" else "float32"


def _per_channel(value, c: int, shape_len: int, axis: int) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        return v
    shape = [1] * shape_len
    shape[axis] = c
    return v.reshape(shape)


def draw_layout(dist: Distribution, shape: tuple[int, ...], axis: int, seed: tuple[int, ...]) -> np.ndarray:
    """Draw like :func:`draw` in the channels-first layout, then move the
    channel to ``axis``: an NHWC case holds exactly the transposed values of
    the NCHW case with the same seed (one case seen in two layouts)."""
    if len(shape) < 2 or axis == 1:
        return draw(dist, shape, axis, seed)
    first = tuple(np.moveaxis(np.empty(shape, dtype=np.uint8), axis, 1).shape)
    return np.moveaxis(draw(dist, first, 1, seed), 1, axis)


def draw(dist: Distribution, shape: tuple[int, ...], axis: int, seed: tuple[int, ...]) -> np.ndarray:
    """Draw float64 values of ``shape`` from ``dist``; per-channel lists
    broadcast along ``axis``. Deterministic for a given ``seed`` tuple."""
    rng = np.random.default_rng(list(seed))
    c = shape[axis] if shape else 1
    if dist.kind == "dataset":
        return dataset_batch(dist.dataset, shape, seed)
    if dist.kind == "normal":
        z = rng.standard_normal(shape)
        a = _per_channel(dist.mean, c, len(shape), axis) + _per_channel(dist.std, c, len(shape), axis) * z
    else:
        a = rng.uniform(dist.low, dist.high, size=shape)
    a = np.array(a, dtype=np.float64)
    for ch in dist.nan_channels:
        idx = [slice(None)] * len(shape)
        idx[axis] = ch
        a[tuple(idx)] = np.nan
    return a


#: The data files of ``sklearn.datasets.load_<name>`` in scikit-learn's
#: ``datasets/data/`` folder (``sklearn/datasets/_base.py``: ``load_csv_data``
#: skips one header line and takes all columns but the last, the target;
#: ``load_digits`` reads ``digits.csv.gz`` with no header the same way).
DATASET_FILES = {"iris": ("iris.csv", 1), "wine": ("wine_data.csv", 1),
                 "breast_cancer": ("breast_cancer.csv", 1), "digits": ("digits.csv.gz", 0)}


@functools.lru_cache(maxsize=None)
def dataset(name: str) -> np.ndarray:
    """The feature matrix ``(n_samples, n_features)`` float64 of a dataset that
    ships inside scikit-learn, equal to ``sklearn.datasets.load_<name>().data``.

    Read straight from the package's data files: importing ``sklearn.datasets``
    (which pulls in SciPy) costs ~1 s per process. Raises ``KeyError`` for an
    unknown name and ``ImportError`` when scikit-learn is not installed.
    """
    file, header = DATASET_FILES[name]
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"dataset {name!r} ships with scikit-learn, which is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / file
    data = np.loadtxt(path, delimiter=",", skiprows=header, dtype=np.float64)
    data = data[:, :-1]
    data.setflags(write=False)
    return data


def dataset_batch(name: str, shape: tuple[int, ...], seed: tuple[int, ...]) -> np.ndarray:
    """Batch ``seed[2]`` of ``shape = (N, C)`` rows of a dataset shipped with
    scikit-learn (:func:`dataset`), rows shuffled by ``seed[0]``; float64."""
    data = dataset(name)
    order = np.random.default_rng([seed[0], 99]).permutation(len(data))
    n, k = shape[0], seed[2]
    rows = order[(np.arange(n) + k * n) % len(data)]
    return data[rows].reshape(shape).copy()


@dataclass
class CaseArrays:
    """The concrete arrays of one case, in storage dtypes.

    ``batches[k]``: input batch k, shape ``case.input.shape``.
    ``grad_outputs[i]``: dL/dy for the backward at step index i.
    ``init[name]``: initial running_mean / running_var / weight / bias, shape (C,).
    ``pre[name]``: a composite case's preceding layer (``case.pre``):
    ``weight`` ``(C_out, C_in, *kernel)`` and, with ``pre.bias``, ``bias``
    ``(C_out,)``, in the input's storage dtype; empty otherwise.
    """

    dtype: str
    param_dtype: str
    batches: dict[int, np.ndarray] = field(default_factory=dict)
    grad_outputs: dict[int, np.ndarray] = field(default_factory=dict)
    init: dict[str, np.ndarray] = field(default_factory=dict)
    pre: dict[str, np.ndarray] = field(default_factory=dict)


def initial_values(case: Case) -> dict[str, np.ndarray]:
    """The layer's initial state ``{name: (C,)}`` (weight, bias, running_mean, running_var), in the case's
    parameter dtype: the ``init`` arrays of :func:`generate`, without drawing the input batches (the expectation
    selectors read only these)."""
    inp, c, pdt = case.input, case.layer.num_features, param_dtype(case.input.dtype)
    out = {}
    for name, spec in case.layer.init:
        if isinstance(spec, Distribution):
            v = draw(spec, (c,), 0, (inp.seed, _STREAM_PARAM, _PARAM_INDEX[name]))
        else:
            v = np.broadcast_to(np.asarray(spec, dtype=np.float64), (c,)).copy()
        out[name] = cast(v, pdt)
    return out


def generate(case: Case) -> CaseArrays:
    """Generate every array the case's step program needs."""
    inp = case.input
    shape, axis, c = tuple(inp.shape), inp.axis, case.layer.num_features
    out = CaseArrays(dtype=inp.dtype, param_dtype=param_dtype(inp.dtype))
    for i, step in enumerate(case.steps):
        if isinstance(step, Forward) and step.batch not in out.batches:
            out.batches[step.batch] = cast(draw_layout(inp.distribution, shape, axis, (inp.seed, _STREAM_INPUT, step.batch)), inp.dtype)
        elif isinstance(step, Backward):
            out.grad_outputs[i] = cast(draw_layout(step.grad_output, shape, axis, (inp.seed, _STREAM_GRAD, i)), inp.dtype)
    out.init.update(initial_values(case))
    if case.pre is not None:
        wshape = (c, shape[1], *case.pre.kernel)
        out.pre["weight"] = cast(draw(case.pre.weight, wshape, 0, (inp.seed, _STREAM_PRE, 0)), inp.dtype)
        if case.pre.bias:
            out.pre["bias"] = cast(draw(case.pre.bias_init, (c,), 0, (inp.seed, _STREAM_PRE, 1)), inp.dtype)
    return out
