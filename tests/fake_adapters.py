"""Plug-in adapters that misbehave the ways issue 15 lists, for the gate-trust
tests (``--adapter tests.fake_adapters:Name`` in real pytest subprocesses).

Each builds on :class:`tests.numpy_bn.NumpyBatchNorm` (a correct NumPy
BatchNorm) and breaks one thing on purpose; ``TARGET_CASE`` is the case the
one-cell misbehaviours pick.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from .numpy_bn import NumpyBatchNorm

TARGET_CASE = "train-1step-m0.5"


class ReturnsNone(NumpyBatchNorm):
    """run() returns None (item 11): every cell must be an ``error`` record."""

    name = "fake: returns None"

    def run(self, case, arrays):
        return None


class ReturnsList(NumpyBatchNorm):
    name = "fake: returns a list"

    def run(self, case, arrays):
        return list(super().run(case, arrays).items())


class UnknownKeys(NumpyBatchNorm):
    name = "fake: unknown keys"

    def run(self, case, arrays):
        obs = super().run(case, arrays)
        obs[(0, "outptu")] = np.zeros(1)
        return obs


class OutputOnly(NumpyBatchNorm):
    """Observes only ``output`` (item 8): on a case about the counter and the
    running statistics it compares nothing and must not conform."""

    name = "numpy-reference"
    observables = frozenset({"output"})

    def run(self, case, arrays):
        return {k: v for k, v in super().run(case, arrays).items() if k[1] == "output"}


class Interrupted(NumpyBatchNorm):
    """Ctrl-C in a serial run, halfway (item 1)."""

    def run(self, case, arrays):
        if case.id == TARGET_CASE:
            raise KeyboardInterrupt
        return super().run(case, arrays)


class SigintController(NumpyBatchNorm):
    """Under ``-n 2``: SIGINT to the controlling pytest process halfway (item 1), once."""

    def run(self, case, arrays):
        if case.id == TARGET_CASE:
            os.kill(os.getppid(), signal.SIGINT)
            time.sleep(5)
        return super().run(case, arrays)


class Aborts(NumpyBatchNorm):
    """os.abort() in a serial run (item 1): the process dies, no run_end is written."""

    def run(self, case, arrays):
        if case.id == TARGET_CASE:
            os.abort()
        return super().run(case, arrays)


class NativeHang(NumpyBatchNorm):
    """A hang that SIGALRM cannot interrupt (item 12), as in native code that blocks signals."""

    name = "fake: native hang"

    def run(self, case, arrays):
        if case.id == TARGET_CASE:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
            time.sleep(60)
        return super().run(case, arrays)


class NotHere(NumpyBatchNorm):
    """``available()`` says no (item 10)."""

    name = "fake: needs a device"

    def available(self):
        return "no such device on this machine"


class UnparseableVersion(NumpyBatchNorm):
    """A build string as the version, and a divergence with a version range (item 9)."""

    name = "fake: build-string version"
    expectations = "data/expectations/fake_versions.yaml"

    def framework_version(self):
        return "2.13.0, cuDNN 91900"


class _KnownBugOffset(NumpyBatchNorm):
    """A known bug the oracle cannot model (no options): the output of the
    cases tagged ``paper`` (``train-1step-m0.1``, ``train-5steps-m0.1``) is
    off by ``offset`` (item 6)."""

    name = "fake: known bug"
    offset = 1.0
    expectations = "data/expectations/fake_known_bug.yaml"

    def run(self, case, arrays):
        obs = super().run(case, arrays)
        if "paper" in case.tags:
            obs = {k: (v + np.asarray(self.offset, v.dtype) if k[1] == "output" else v) for k, v in obs.items()}
        return obs


class KnownBugOffBy1(_KnownBugOffset):
    offset = 1.0


class KnownBugOffBy1000(_KnownBugOffset):
    offset = 1000.0


class NearTolerance(NumpyBatchNorm):
    """Conforms, but its output error on ``train-1step-m0.1`` sits at 0.8 of the
    tolerance (item 6): the oracle value plus 0.8 x tolerance, stored in the
    storage dtype (its rounding moves the ratio by at most 1/(2 x SAFETY))."""

    name = "numpy-reference"

    def run(self, case, arrays):
        obs = super().run(case, arrays)
        if case.id != "train-1step-m0.1":
            return obs
        from bnconform.compare import tolerance
        from bnconform.engine import _expect
        from bnconform.oracle import CANONICAL

        expect = _expect(case, CANONICAL)
        for (i, name), exp in expect.values.items():
            if name == "output":
                tol = tolerance(exp.value, exp.magnitude, name, case, i)
                obs[(i, name)] = (exp.value + 0.8 * tol).astype(obs[(i, name)].dtype)
        return obs


class MomentumFlippedReference(NumpyBatchNorm):
    """The reference adapter after a regression (momentum read as decay), under the same name."""

    name = "numpy-reference"
    momentum_is_decay = True


class OnePassRow(NumpyBatchNorm):
    """Runs the documented one-pass variance it declares (tests/data/expectations/fake_one_pass.yaml)."""

    name = "fake: one-pass variance"
    variance_algorithm = "one_pass_clamped"
    expectations = "data/expectations/fake_one_pass.yaml"


class FixedOnePassRow(OnePassRow):
    """Declares the one-pass variance but computes two-pass: the documented defect was fixed, and no
    single cell can tell (both lie inside the one-pass envelope); only the whole row can."""

    name = "fake: one-pass variance, fixed"
    variance_algorithm = "two_pass"


class WithBuild(NumpyBatchNorm):
    """A PEP 440 version and the build details beside it (item 9), as the CUDA and ONNX-export rows report."""

    name = "fake: with build"

    def framework_version(self):
        return "2.13.0"

    def framework_build(self):
        return "cuDNN 91900, NVIDIA H100"
