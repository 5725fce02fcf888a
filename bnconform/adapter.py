"""The adapter protocol: how a framework's BatchNorm is driven through a case.

An adapter TRANSLATES and CALLS; it never compares, never judges, and holds no
tolerance. It supplies framework hooks (build the layer, forward in a mode,
backward with a grad_output, SGD step, read the state: :class:`Adapter`);
the one step interpreter (:mod:`bnconform.drive`) runs the case's step
program through them on ONE layer instance, with the case's arrays (identical
for every adapter), and returns observations::

    {(step_index, observable): numpy.ndarray}

* ``output`` / ``grad_input``: shape of the input, in the case's layout, in the
  input storage dtype (bfloat16 returned as float32 holding bfloat16 values).
* ``running_mean`` / ``running_var`` / ``weight`` / ``bias`` /
  ``grad_weight`` / ``grad_bias``: shape ``(C,)``, float32 (float64 for
  float64 cases).
* ``num_batches_tracked``: 0-d integer array.

State observables are reported after every step. An observable the framework
has no notion of (e.g. a counter) is left out of ``observables``.

Documented divergences (a framework's design choices, ``quirk``, defects,
``known_bug``, and its documented rejections of undefined cases) are DATA, not
adapter code: ``expectations/<framework>.yaml``, loaded and validated by
:mod:`bnconform.expect`, interpreted by :mod:`bnconform.engine`.
"""

from __future__ import annotations

import importlib
import sys
from typing import ClassVar

import numpy as np

from .arrays import CaseArrays
from .catalogue import OBSERVABLES, Case

Observations = dict[tuple[int, str], np.ndarray]


class Adapter:
    """Base class of every adapter; subclass, fill the class attributes and
    implement the hooks (:meth:`build`, :meth:`forward`, :meth:`backward`,
    :meth:`sgd_step`, :meth:`state`; optionally :meth:`scope`, :meth:`to_numpy`).

    ``name``: row label in the report (e.g. ``"torch.nn.BatchNorm2d"``).
    ``framework``: the import name (``"torch"``); ``framework_version()``
    imports it and returns a PEP 440 version; ``framework_build()`` the rest.
    ``device``: ``"cpu"`` or e.g. ``"cuda"``.
    """

    name: ClassVar[str] = ""
    framework: ClassVar[str] = ""
    device: ClassVar[str] = "cpu"
    observables: ClassVar[frozenset[str]] = frozenset(OBSERVABLES)
    #: Plug-in adapters only: path of their expectations YAML (relative to the
    #: module defining the class). BUILTIN rows are found by their group.
    expectations: ClassVar[str | None] = None
    #: Runs synchronized BatchNorm over the replicas of a replica case
    #: (``Case.replicas``) on a distributed runtime: ``forward`` gets the global
    #: batch and returns the replicas' outputs concatenated along axis 0,
    #: ``backward`` the global input gradient and the cross-replica SUM of the
    #: parameter gradients, ``state`` one row per replica (``(R, C)``; see
    #: ``Case.replica_slices``). An adapter without it reports every replica
    #: case ``unsupported``.
    runs_replicas: ClassVar[bool] = False

    #: ``PreLayer.kind`` values (``"conv"``, ``"linear"``) whose composite cases
    #: the adapter builds as the block ``pre -> BatchNorm`` (it then reads
    #: ``arrays.pre``); composite cases of other kinds are ``unsupported``.
    blocks: ClassVar[frozenset[str]] = frozenset()

    def framework_version(self) -> str:
        """Import the framework and return its version string.

        Raises ``ImportError`` (or whatever the import raises) when it is broken.
        """
        module = importlib.import_module(self.framework)
        return str(getattr(module, "__version__", "unknown"))

    def framework_build(self) -> str | None:
        """Build and runtime details that are not part of the version (e.g.
        ``"cuDNN 91900; NVIDIA H100"``, an exporter's runtime stack), or None.
        Recorded as ``framework_build``; :meth:`framework_version` must stay a
        PEP 440 version so divergence ranges can be evaluated."""
        return None

    def available(self) -> str | None:
        """Reason this adapter cannot run on this machine at all (e.g. no CUDA
        device), or None. Framework import failures are NOT reported here:
        they propagate from :meth:`framework_version` so they stay loud."""
        return None

    def capabilities(self, case: Case) -> str | None:
        """Reason the framework cannot express ``case`` (-> ``unsupported``), or None."""
        return None

    def run(self, case: Case, arrays: CaseArrays) -> Observations:
        """Run ``case.steps`` on one fresh layer; return observations (see module doc).

        Do not override: implement the hooks below, which the one step
        interpreter (:func:`bnconform.drive.interpret`) calls. An adapter that
        still overrides ``run`` is called as before (legacy)."""
        from .drive import interpret

        return interpret(self, case, arrays)

    # Hooks of the step interpreter (bnconform/drive.py owns the step
    # semantics; ``cell`` is a bnconform.drive.Cell, one per run).
    def scope(self, case: Case):
        """Context manager around one cell's build and steps (process-wide
        framework switches, e.g. ``torch.backends.cudnn.flags``). Default: none."""
        from .drive import nullscope

        return nullscope(case)

    def build(self, cell) -> None:
        """Create ONE fresh layer configured from ``cell.case.layer`` with the
        initial state ``cell.arrays.init`` (see ``cell.init``); keep whatever
        the other hooks need as attributes of ``cell``."""
        raise NotImplementedError(f"adapter {self.name!r} implements neither run() nor the build() hook")

    def forward(self, cell, x: np.ndarray, mode: str):
        """Run the layer on batch ``x`` (NumPy, storage dtype, the case's layout)
        in ``mode`` (``train`` / ``eval`` / ``train_global_stats``); record what
        a later :meth:`backward` needs when ``cell.needs_grad``. Return the
        output (framework value, input dtype)."""
        raise NotImplementedError(f"adapter {self.name!r} has no forward() hook")

    def backward(self, cell, grad_output: np.ndarray, retain: bool):
        """Back-propagate ``grad_output`` (NumPy, storage dtype) through the latest
        forward with FRESH gradients; keep the graph when ``retain``. Return
        ``(grad_input, {"weight": g, "bias": g})`` (at least the parameters in
        ``cell.trainable``; a ``None`` gradient is reported as missing)."""
        raise NotImplementedError(f"adapter {self.name!r} has no backward() hook")

    def sgd_step(self, cell, lr: float) -> None:
        """One plain SGD update ``p -= lr * grad`` of exactly ``cell.trainable``
        with the latest backward's gradients; called on every ``sgd_step`` of an
        affine layer, also when all parameters are frozen (``cell.trainable``
        empty: an optimizer built from the trainable list is then not built)."""
        raise NotImplementedError(f"adapter {self.name!r} has no sgd_step() hook")

    def state(self, cell) -> dict:
        """The layer's state now: any of ``running_mean``, ``running_var``,
        ``num_batches_tracked``, ``weight``, ``bias`` (framework values); the
        interpreter keeps what the case and ``observables`` make observable."""
        return {}

    def to_numpy(self, value) -> np.ndarray:
        """A framework value (tensor, array) as NumPy; bfloat16 may stay
        ``ml_dtypes.bfloat16`` (the interpreter widens it to float32)."""
        return np.asarray(value)


def load_adapter(target: str) -> Adapter:
    """Instantiate ``"package.module:ClassName"``.

    Raises ``ValueError`` for a malformed target and ``ImportError`` /
    ``AttributeError`` / ``TypeError`` with the target named when it cannot be
    loaded or is not an :class:`Adapter`.
    """
    if ":" not in target:
        raise ValueError(f"adapter target {target!r} must look like 'package.module:ClassName'")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ImportError(f"cannot import adapter module {module_name!r} for {target!r}: {exc!r}") from exc
    try:
        cls = getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no adapter {attr!r} (from {target!r})") from None
    obj = cls() if isinstance(cls, type) else cls
    if not isinstance(obj, Adapter):
        raise TypeError(f"{target!r} is not a bnconform.adapter.Adapter subclass")
    return obj


def builtin_registry() -> dict[str, tuple[str, str]]:
    """The built-in rows, ``adapters.BUILTIN``: ``{report name: ("module:Class", group)}``.

    Installed (:func:`bnconform.builtin.location`): the package
    ``bnconform._builtin.adapters``, its targets rewritten to that package
    (``bnconform._builtin.adapters.torch_nn:BatchNorm1d``); a top-level
    ``adapters`` package of the user's is never imported. In a checkout: the
    ``adapters`` package of the current path (pytest puts the rootdir there)
    or, failing that, of the checkout this ``bnconform`` lives in (the
    ``bnconform`` console script runs with its own ``bin/`` as
    ``sys.path[0]``). ``{}`` where none has it.
    """
    from .builtin import location

    where = location()
    if where.installed:
        try:
            module = importlib.import_module(where.adapters_package)
        except ImportError:
            return {}
        prefix = "adapters."
        return {name: (where.adapters_package + "." + target[len(prefix):] if target.startswith(prefix) else target,
                       group) for name, (target, group) in module.BUILTIN.items()}
    try:
        from adapters import BUILTIN
    except ImportError:
        if not (where.root / "adapters" / "__init__.py").is_file():
            return {}
        sys.path.append(str(where.root))
        try:
            from adapters import BUILTIN
        except ImportError:
            return {}
    return dict(BUILTIN)
