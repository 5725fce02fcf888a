"""The adapter protocol: how a framework's BatchNorm is driven through a case.

An adapter TRANSLATES and CALLS; it never compares, never judges, and holds no
tolerance. It receives the case (framework-neutral semantics) and the arrays
(identical for every adapter), runs the step program on ONE layer instance,
and returns observations::

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
from typing import ClassVar

import numpy as np

from .arrays import CaseArrays
from .catalogue import OBSERVABLES, Case

Observations = dict[tuple[int, str], np.ndarray]


class Adapter:
    """Base class of every adapter; subclass and fill the class attributes.

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

    def run(self, case: Case, arrays: CaseArrays) -> Observations:  # pragma: no cover - abstract
        """Run ``case.steps`` on one fresh layer; return observations (see module doc)."""
        raise NotImplementedError

    # Helpers shared by adapters (translation only).
    @staticmethod
    def frozen(case: Case, name: str) -> bool:
        return name in case.layer.frozen


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
