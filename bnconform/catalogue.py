"""The case catalogue: YAML files under ``cases/``, validated by a pydantic schema.

A case is framework-neutral data: a BatchNorm layer configuration, a seeded
input specification, and an ordered program of steps run on ONE layer
instance. Every validation error names the file, the case id and the field
(``cases/training.yaml: case 'train-1step': field 'layer.momentum': ...``).

Conventions fixed by the catalogue (adapters translate to their framework):

* ``momentum`` is the weight of the NEW batch statistic (PyTorch convention,
  ``torch/nn/modules/batchnorm.py``): ``running = (1 - momentum) * running +
  momentum * batch``. Keras, MXNet, Flax, Paddle and ONNX use the decay
  ``1 - momentum``; Caffe's ``moving_average_fraction`` is also ``1 - momentum``.
  ``momentum: null`` is the cumulative (simple) average of all batch statistics
  seen so far (PyTorch ``momentum=None``).
* ``weight`` is gamma (the scale) and ``bias`` is beta (the shift) of
  Ioffe & Szegedy 2015 (arXiv:1502.03167), Alg. 1.
* The channel axis of the input is ``input.channel_axis`` (1 for NCHW, -1 for
  NHWC); statistics reduce over every other axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

#: ``yaml.safe_load``'s loader, in libyaml's C implementation where PyYAML has
#: it (same safe constructors; parsing the catalogue drops from ~0.24 s to
#: ~0.03 s per collecting process, i.e. per xdist worker).
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DTYPES = ("float64", "float32", "float16", "bfloat16")
DATASET_FEATURES = {"iris": 4, "wine": 13, "breast_cancer": 30, "digits": 64}
MODES = ("train", "eval", "train_global_stats")

#: Observables a case may compare. State observables (running_mean,
#: running_var, num_batches_tracked, weight, bias) are observed after EVERY
#: step; output after forward; grad_* after backward.
#: Values per channel from which a case is LARGE (pytest marker ``large``, tag ``large``;
#: ``pytest -m "not large"`` deselects them for a quick run): 2^16, where a half-precision
#: accumulation of unit-sized values leaves float16's range (largest finite 65504) and a
#: sum's rounding error in float32 reaches u_float32 * sqrt(m) = 2^-16 relative — the sizes
#: real networks reduce over and the small catalogue does not reach.
LARGE_REDUCTION_SIZE = 2**16

STATE_OBSERVABLES = ("running_mean", "running_var", "num_batches_tracked", "weight", "bias")
OBSERVABLES = ("output", "grad_input", "grad_weight", "grad_bias") + STATE_OBSERVABLES


class DataFileError(ValueError):
    """A data file (a catalogue file, an expectations file) or one of its items is malformed.

    ``str()`` reads ``<file>: <noun> '<id>': field '<dotted.path>': <message>``
    (``noun`` is the subclass's: ``case``, ``entry``); the parts are also kept
    as attributes ``file``, ``item_id``, ``field`` and ``message``.
    """

    noun = "item"

    def __init__(self, file: str, message: str, item_id: str | None = None, field: str | None = None):
        self.file, self.item_id, self.field, self.message = file, item_id, field, message
        where = [file]
        if item_id is not None:
            where.append(f"{self.noun} {item_id!r}")
        if field:
            where.append(f"field {field!r}")
        super().__init__(": ".join(where + [message]))

    #: Location parts pydantic adds for unions and model validators, dropped from field paths
    #: (exact names, and name prefixes).
    location_tags: frozenset[str] = frozenset()
    location_tag_prefixes: tuple[str, ...] = ()

    @classmethod
    def field_path(cls, loc: tuple) -> str:
        """A pydantic error location as a dotted field path, ``steps[2].mode``."""
        out = ""
        for part in loc:
            if isinstance(part, int):
                out += f"[{part}]"
            elif part in cls.location_tags or str(part).startswith(cls.location_tag_prefixes):
                continue
            else:
                out += ("." if out else "") + str(part)
        return out

    @classmethod
    def from_validation(cls, file: str, err: ValidationError, item_id: str | None) -> "DataFileError":
        """pydantic's first error as this error (its field path), up to three more in the message."""
        errors = err.errors()
        msg = errors[0]["msg"]
        if len(errors) > 1:
            msg += " (also: " + "; ".join(f"{cls.field_path(x['loc'])}: {x['msg']}" for x in errors[1:4]) + ")"
        return cls(file, msg, item_id, cls.field_path(errors[0]["loc"]) or None)


def load_yaml_file(path: Path, shown: str, error: type[DataFileError]):
    """The YAML document of ``path`` (UTF-8), as :func:`load_yaml`; an unreadable
    file raises ``error(shown, "cannot read: ...")``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(shown, f"cannot read: {exc}") from None
    return load_yaml(text, shown, error)


def load_yaml(text: str, shown: str, error: type[DataFileError]):
    """``text`` parsed with PyYAML's safe loader (libyaml's where installed).

    Raises ``error(shown, "YAML syntax error at line L, column C: ...")`` for
    text that is not YAML (line and column 1-based), naming the file as ``shown``.
    """
    try:
        return yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(shown, f"YAML syntax error{where}: {getattr(exc, 'problem', exc)}") from None


class CatalogueError(DataFileError):
    """A catalogue file or case is malformed: ``<file>: case '<id>': field '<dotted.path>': <message>``."""

    noun = "case"
    location_tags = frozenset({"forward", "backward", "sgd_step", "function-after[_consistent(), Case]"})

    @property
    def case_id(self) -> str | None:
        return self.item_id


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where the pinned behaviour comes from: a paper section, a framework
    source file, a forum thread (``file`` names a document under
    ``shared/seeds/`` when the case answers one), an upstream issue."""

    title: str = Field(min_length=1)
    url: str | None = None
    file: str | None = None
    section: str | None = None


class Distribution(_Strict):
    """A seeded distribution of values, drawn in float64.

    ``mean`` and ``std`` (normal) or ``low`` and ``high`` (uniform) are scalars
    or one value per channel; ``std: 0`` gives a constant channel.
    ``nan_channels`` sets every value of those channels to NaN.

    ``kind: dataset`` takes real data that ships inside scikit-learn
    (``sklearn.datasets.load_<dataset>``, no download): the rows are shuffled
    with the case seed and batch k is the k-th slice of N rows (wrapping
    around); the input must be (N, C) with C = the dataset's feature count
    (iris 4, wine 13, breast_cancer 30, digits 64).
    """

    kind: Literal["normal", "uniform", "dataset"] = "normal"
    dataset: Literal["iris", "wine", "breast_cancer", "digits"] | None = None
    mean: float | list[float] = 0.0
    std: float | list[float] = 1.0
    low: float = 0.0
    high: float = 1.0
    nan_channels: list[int] = Field(default_factory=list)

    @field_validator("std")
    @classmethod
    def _std_nonnegative(cls, v):
        values = v if isinstance(v, list) else [v]
        if any(s < 0 for s in values):
            raise ValueError("std must be >= 0")
        return v

    @model_validator(mode="after")
    def _uniform_bounds(self):
        if self.kind == "uniform" and not self.low < self.high:
            raise ValueError("uniform needs low < high")
        if (self.kind == "dataset") != (self.dataset is not None):
            raise ValueError("kind: dataset and a dataset name go together")
        return self


#: A parameter's initial value: a scalar fill, one value per channel, or a
#: seeded distribution.
ParamInit = Union[float, list[float], Distribution]


class LayerInit(_Strict):
    """Initial buffers and parameters; defaults are the framework defaults
    (running_mean 0, running_var 1, weight 1, bias 0)."""

    running_mean: ParamInit = 0.0
    running_var: ParamInit = 1.0
    weight: ParamInit = 1.0
    bias: ParamInit = 0.0


class Layer(_Strict):
    """The BatchNorm layer under test.

    ``momentum`` is the new-batch weight in [0, 1] or ``null`` for the
    cumulative average. ``frozen`` lists parameters held fixed through the
    framework's own idiom (``requires_grad=False``, ``trainable=False``,
    ``lr_mult=0``...): they are not updated by ``sgd_step`` and their gradient
    is not compared.
    """

    num_features: int = Field(gt=0)
    eps: float = Field(default=1e-5, ge=0.0)
    momentum: float | None = Field(default=0.1, ge=0.0, le=1.0)
    affine: bool = True
    track_running_stats: bool = True
    frozen: list[Literal["weight", "bias"]] = Field(default_factory=list)
    init: LayerInit = Field(default_factory=LayerInit)

    @property
    def decay(self) -> float:
        """``1 - momentum``, the ``momentum`` argument of frameworks whose momentum is the moving-average
        DECAY (Keras, tf-keras, Flax, Paddle, MXNet, ONNX, Equinox). ``momentum: null`` (the cumulative
        average) reaches such a framework only in a program that never updates the running statistics
        (``Case.uses_cumulative_average`` is false: eval or untracked): the decay is then unused, and
        ``0.9`` (the new-batch weight 0.1 of PyTorch's default) is returned for the constructor."""
        return 1.0 - (0.1 if self.momentum is None else self.momentum)


class Input(_Strict):
    """Input batches: ``shape`` (N, C, *) seen with the channel at
    ``channel_axis``; values drawn in float64 then cast to ``dtype``. Batch k of
    the program is drawn with seed ``(seed, 0, k)``."""

    shape: list[int] = Field(min_length=2)
    channel_axis: int = 1
    dtype: Literal["float64", "float32", "float16", "bfloat16"] = "float32"
    seed: int = Field(default=0, ge=0)
    distribution: Distribution = Field(default_factory=Distribution)

    @field_validator("shape")
    @classmethod
    def _positive(cls, v):
        if any(d < 0 for d in v):
            raise ValueError("dimensions must be >= 0")
        return v

    @model_validator(mode="after")
    def _axis_in_range(self):
        if not -len(self.shape) <= self.channel_axis < len(self.shape):
            raise ValueError(f"channel_axis {self.channel_axis} out of range for rank {len(self.shape)}")
        return self

    @property
    def axis(self) -> int:
        """The channel axis as a non-negative index."""
        return self.channel_axis % len(self.shape)

    @property
    def reduction_size(self) -> int:
        """Number of values per channel in one batch (N * spatial), ``m`` in the paper."""
        return math.prod(self.shape) // max(self.shape[self.axis], 1) if self.shape[self.axis] else 0


class PreLayer(_Strict):
    """A linear layer BEFORE the BatchNorm (the composite theme: Conv -> BN,
    Linear -> BN, the blocks inference engines fold BN into).

    ``kind: conv``: a cross-correlation over every spatial axis (PyTorch
    ``nn.ConvNd``, ONNX ``Conv``), stride 1, zero padding ``(k - 1) / 2`` per
    axis (``kernel`` sizes odd: "same" padding), so the BatchNorm input keeps
    the spatial shape of the case's input and ``input.reduction_size`` is
    the BatchNorm's ``m``; weight shape ``(C_out, C_in, *kernel)``.
    ``kind: linear``: ``x @ W.T + b`` on ``(N, C_in)`` input (``nn.Linear``,
    ONNX ``Gemm`` with ``transB=1``); weight ``(C_out, C_in)``.

    ``C_in`` is ``input.shape[1]`` (channels-first only), ``C_out`` is
    ``layer.num_features``. ``weight`` and ``bias`` (with ``bias: true``) are
    drawn with the case seed and stored in the input dtype; the layer is not
    trained (composite cases are forward-only programs).
    """

    kind: Literal["conv", "linear"]
    kernel: list[int] = Field(default_factory=list)
    bias: bool = True
    weight: Distribution = Field(default_factory=lambda: Distribution(std=0.5))
    bias_init: Distribution = Field(default_factory=Distribution)

    @field_validator("kernel")
    @classmethod
    def _odd(cls, v):
        if any(k < 1 or k % 2 == 0 for k in v):
            raise ValueError("kernel sizes must be odd and >= 1 ('same' padding (k - 1) / 2)")
        return v


class Forward(_Strict):
    """Run the layer on batch ``batch`` in ``mode``:

    * ``train`` — normalise with the batch statistics (biased variance) and
      update the running statistics (Ioffe & Szegedy 2015, Alg. 1 and 2).
    * ``eval`` — normalise with the running statistics (inference).
    * ``train_global_stats`` — normalise with the running statistics inside a
      training graph: gradients flow, running statistics are not updated
      (MXNet ``use_global_stats=True``, Keras ``trainable=False``, Flax
      ``use_running_average=True``, ``torch.nn.Module.eval()`` under autograd).

    With ``track_running_stats: false`` every mode uses batch statistics. An
    empty batch (N = 0) gives an empty output and leaves the running statistics
    unchanged (a train forward is still counted by ``num_batches_tracked``).
    """

    op: Literal["forward"]
    mode: Literal["train", "eval", "train_global_stats"]
    batch: int = Field(default=0, ge=0)


class Backward(_Strict):
    """Back-propagate a seeded ``grad_output`` (dL/dy, same shape as the
    output) through the most recent forward. Gradients are fresh (not
    accumulated across backward steps)."""

    op: Literal["backward"]
    grad_output: Distribution = Field(default_factory=Distribution)


class SgdStep(_Strict):
    """One plain SGD update ``p -= lr * grad`` (no momentum, no weight decay)
    of every non-frozen parameter, with the gradients of the latest backward."""

    op: Literal["sgd_step"]
    lr: float = Field(gt=0.0)


Step = Annotated[Union[Forward, Backward, SgdStep], Field(discriminator="op")]


class Case(_Strict):
    """One catalogue scenario. ``observe`` selects the observables compared
    (default: all that the program produces)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    title: str = Field(min_length=1)
    behaviour: str = Field(min_length=1, description="one-line statement of the behaviour pinned")
    source: list[Source] = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    layer: Layer
    input: Input
    steps: list[Step] = Field(min_length=1)
    #: an optional Conv / Linear layer before the BatchNorm (composite theme; :class:`PreLayer`)
    pre: PreLayer | None = None
    observe: list[Literal[OBSERVABLES]] = Field(default_factory=lambda: list(OBSERVABLES))  # type: ignore[valid-type]
    #: Synchronized BatchNorm across replicas: the per-replica batch sizes
    #: ``[n_0, ..., n_{R-1}]`` (R >= 2, each >= 0, summing to ``input.shape[0]``);
    #: replica r holds rows ``n_0 + ... + n_{r-1}`` up to ``+ n_r`` of every batch
    #: along axis 0 (semantics: :attr:`replica_slices`).
    replicas: list[int] | None = Field(default=None, min_length=2)
    # Filled by the loader, not by the YAML author.
    file: str = ""
    theme: str = ""

    @model_validator(mode="after")
    def _consistent(self):
        c = self.input.shape[self.input.axis]
        if self.pre is not None:
            self._check_pre()
            c = self.layer.num_features
        if c != self.layer.num_features:
            raise ValueError(
                f"layer.num_features={self.layer.num_features} but input.shape[channel_axis]={c}"
            )
        if not self.layer.affine and self.layer.frozen:
            raise ValueError("layer.frozen lists parameters but layer.affine is false")
        seen_forward = seen_backward = stepped = False
        for i, step in enumerate(self.steps):
            if isinstance(step, Backward) and not seen_forward:
                raise ValueError(f"steps[{i}]: backward before any forward")
            if isinstance(step, SgdStep) and not seen_backward:
                raise ValueError(f"steps[{i}]: sgd_step before any backward")
            if isinstance(step, Backward) and stepped:
                # The forward used the parameters before the update: which ones the gradient
                # is of is undefined (torch raises: a saved tensor was modified in place).
                raise ValueError(f"steps[{i}]: backward after an sgd_step needs a new forward first")
            seen_forward |= isinstance(step, Forward)
            seen_backward |= isinstance(step, Backward)
            stepped = (stepped or isinstance(step, SgdStep)) and not isinstance(step, Forward)
        for name, init in self.layer.init:
            if isinstance(init, list) and len(init) != c:
                raise ValueError(f"layer.init.{name} has {len(init)} values for {c} channels")
            if isinstance(init, Distribution) and init.kind == "dataset":
                raise ValueError(f"layer.init.{name}: a dataset cannot initialise a parameter")
        for i, step in enumerate(self.steps):
            if isinstance(step, Backward) and step.grad_output.kind == "dataset":
                raise ValueError(f"steps[{i}].grad_output: a dataset cannot be a gradient")
        if self.replicas is not None:
            if any(n < 0 for n in self.replicas):
                raise ValueError("replicas: per-replica batch sizes must be >= 0")
            if self.input.axis == 0:
                raise ValueError("replicas split the batch axis 0, which cannot be the channel axis")
            if sum(self.replicas) != self.input.shape[0]:
                raise ValueError(f"replicas {self.replicas} sum to {sum(self.replicas)}, "
                                 f"not to the batch size input.shape[0]={self.input.shape[0]}")
        dist = self.input.distribution
        if dist.kind == "dataset":
            features = DATASET_FEATURES[dist.dataset]
            if len(self.input.shape) != 2 or self.input.axis != 1 or self.input.shape[1] != features:
                raise ValueError(f"input.shape must be [N, {features}] (channel_axis 1) for dataset {dist.dataset}")
        return self

    def _check_pre(self):
        pre, rank = self.pre, len(self.input.shape)
        if self.input.axis != 1:
            raise ValueError("pre: a composite case is channels-first (channel_axis 1)")
        if pre.kind == "linear" and (rank != 2 or pre.kernel):
            raise ValueError("pre.kind linear takes (N, C_in) input and no kernel")
        if pre.kind == "conv" and (rank < 3 or len(pre.kernel) != rank - 2):
            raise ValueError(f"pre.kernel needs one size per spatial axis ({rank - 2} for rank {rank})")
        if any(isinstance(s, (Backward, SgdStep)) for s in self.steps):
            raise ValueError("pre: composite cases are forward-only programs (the preceding layer is not trained)")
        if self.input.distribution.kind == "dataset":
            raise ValueError("pre: a dataset input has no composite form")

    @property
    def pre_fan_in(self) -> int:
        """Products summed per output value of the preceding layer (``C_in * prod(kernel)``), 0 without one."""
        if self.pre is None:
            return 0
        return self.input.shape[1] * math.prod(self.pre.kernel)

    @property
    def large(self) -> bool:
        """Whether one batch reduces over at least :data:`LARGE_REDUCTION_SIZE` values per channel."""
        return self.input.reduction_size >= LARGE_REDUCTION_SIZE

    @property
    def trains(self) -> bool:
        """Whether any forward runs in ``train`` mode."""
        return any(isinstance(s, Forward) and s.mode == "train" for s in self.steps)

    @property
    def uses_cumulative_average(self) -> bool:
        """``momentum: null`` with tracked statistics and a train step: the
        program needs a cumulative average (frameworks with only a float
        momentum cannot express it)."""
        return self.layer.momentum is None and self.layer.track_running_stats and self.trains

    def backward_follows(self, i: int) -> bool:
        """Whether another backward comes after step ``i`` before the next
        forward: an adapter then keeps the autograd graph (``retain_graph``),
        as a user would."""
        for step in self.steps[i + 1:]:
            if isinstance(step, Forward):
                return False
            if isinstance(step, Backward):
                return True
        return False

    @property
    def replica_slices(self) -> list[slice] | None:
        """Replica r's rows of a batch along axis 0 (``None`` for a one-replica case).

        A replica case is SYNCHRONIZED BatchNorm over ``len(replicas)`` data-parallel
        replicas (``keras.layers.BatchNormalization(synchronized=True)`` under a
        ``tf.distribute`` strategy, ``flax.linen.BatchNorm(axis_name=...)`` under
        ``jax.pmap``/``shard_map``, ``torch.nn.SyncBatchNorm``): the batch
        statistics are those of the union of every replica's values (the global
        batch ``input.shape``), and every replica keeps identical running
        statistics and parameters. Observed: ``output``/``grad_input`` as the
        global batch (the replicas' slices concatenated along axis 0), state
        observables with one row per replica (shape ``(R, C)``; ``(R,)`` for
        ``num_batches_tracked``) and ``grad_weight``/``grad_bias`` as the
        cross-replica SUM of the per-replica gradients (the gradient of the
        global loss, which a data-parallel optimizer applies): the oracle
        (:func:`bnconform.oracle.simulate`) defines each.
        """
        if self.replicas is None:
            return None
        starts = [sum(self.replicas[:r]) for r in range(len(self.replicas))]
        return [slice(s, s + n) for s, n in zip(starts, self.replicas)]

    @property
    def source_titles(self) -> str:
        return "; ".join(s.title for s in self.source)


class CatalogueFile(_Strict):
    """One YAML file: a theme and its cases."""

    theme: str = Field(min_length=1)
    description: str = ""
    cases: list[dict] = Field(min_length=1)


def load_file(path: str | Path, root: str | Path | None = None) -> list[Case]:
    """Load and validate one catalogue file.

    Returns the cases in file order, each with ``file`` and ``theme`` set.
    Raises :class:`CatalogueError` naming file, case id and field for YAML
    syntax errors, unknown fields, wrong types, impossible shapes, unknown
    steps or modes, and duplicate ids within the file.
    """
    path = Path(path)
    shown = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
    raw = load_yaml_file(path, shown, CatalogueError)
    if not isinstance(raw, dict):
        raise CatalogueError(shown, "top level must be a mapping with 'theme' and 'cases'")
    try:
        meta = CatalogueFile.model_validate(raw)
    except ValidationError as exc:
        raise CatalogueError.from_validation(shown, exc, None) from None
    cases: list[Case] = []
    seen: set[str] = set()
    for index, data in enumerate(meta.cases):
        if not isinstance(data, dict):
            raise CatalogueError(shown, "each case must be a mapping", f"#{index}", f"cases[{index}]")
        case_id = data.get("id") if isinstance(data.get("id"), str) else f"#{index}"
        try:
            case = Case.model_validate({**data, "file": shown, "theme": meta.theme})
        except ValidationError as exc:
            raise CatalogueError.from_validation(shown, exc, case_id) from None
        if case.id in seen:
            raise CatalogueError(shown, "duplicate case id", case.id, "id")
        seen.add(case.id)
        cases.append(case)
    return cases


@dataclass
class Catalogue:
    """Cases from several files plus the errors of files that failed to load;
    a bad file never hides the valid cases of the others."""

    cases: list[Case]
    errors: list[CatalogueError]

    def by_id(self) -> dict[str, Case]:
        return {c.id: c for c in self.cases}


def load_catalogue(paths: list[str | Path] | None = None, root: str | Path | None = None) -> Catalogue:
    """Load every ``*.yaml`` under ``paths`` (files or directories; default
    ``cases/`` under ``root``). Duplicate ids across files are errors of the
    later file. Never raises for a bad file: see :class:`Catalogue.errors`."""
    root = Path(root) if root else Path.cwd()
    files: list[Path] = []
    for p in paths or [root / "cases"]:
        p = Path(p)
        files.extend(sorted(p.rglob("*.yaml")) if p.is_dir() else [p])
    cases: list[Case] = []
    errors: list[CatalogueError] = []
    seen: dict[str, str] = {}
    for f in files:
        try:
            loaded = load_file(f, root)
        except CatalogueError as exc:
            errors.append(exc)
            continue
        for case in loaded:
            if case.id in seen:
                errors.append(CatalogueError(case.file, f"duplicate case id (first in {seen[case.id]})", case.id, "id"))
                continue
            seen[case.id] = case.file
            cases.append(case)
    return Catalogue(cases, errors)
