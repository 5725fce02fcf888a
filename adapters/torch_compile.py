"""``torch.compile`` execution paths of BatchNorm (inductor backend on CPU).

Each adapter runs the eager adapter's exact program, but the module (or the
functional) is wrapped in ``torch.compile``; the eager rows beside them in the
report show any difference one glance away. A compile failure surfaces as the
framework's exception, i.e. an ``error`` cell with the message.

Semantics relied on: compiled code must keep eager semantics, including the
in-place running-statistic update and ``num_batches_tracked`` (buffers are
mutated by the compiled graph; ``torch/_dynamo`` functionalises the in-place
``copy_`` back to the module buffers).
"""

from __future__ import annotations

from bnconform.adapter import Divergence
from bnconform.catalogue import Backward, Case

from .torch_functional import FunctionalBatchNorm
from ._torch import MODULE_BY_RANK
from .torch_nn import _TorchModule



def _half_backward(case: Case) -> bool:
    return case.input.dtype in ("float16", "bfloat16") and any(isinstance(s, Backward) for s in case.steps)


#: Inductor's batch-norm backward for float16/bfloat16 inputs is less accurate
#: than eager (which accumulates in float32 and conforms).
INDUCTOR_HALF_BACKWARD = Divergence(
    id="inductor-half-precision-bn-backward",
    kind="known_bug",
    summary=("float16/bfloat16 input: the inductor-compiled backward gives grad_input and grad_weight 2-130x "
             "outside the float32-accumulation bound that eager meets (expected on half-precision cases with a "
             "backward). Related upstream: inductor elides low-precision casts by default "
             "(TORCHINDUCTOR_EMULATE_PRECISION_CASTS, pytorch/pytorch#183761)"),
    source=("torch/_decomp/decompositions.py native_batch_norm_backward (the decomposition inductor lowers) "
            "vs aten/src/ATen/native/cpu/batch_norm_kernel.cpp (eager, opmath_t accumulation)"),
    finding="findings/torch_compile_half_bn_backward.py",
    observables=("grad_input", "grad_weight", "grad_bias"),
    when=_half_backward,
)


class _Fresh:
    """Each case compiles from a clean dynamo cache (``torch._dynamo.reset()``,
    as PyTorch's own tests do between tests): cells stay independent and the
    recompile limit is never reached across cases."""

    def scope(self, case):
        self.torch._dynamo.reset()
        return super().scope(case)


class CompiledModule(_Fresh, _TorchModule):
    """``torch.compile(torch.nn.BatchNorm{1,2,3}d(...))``, the class chosen by input rank."""

    name = "torch.compile(nn.BatchNormNd)"
    ranks = (2, 3, 4, 5)
    fullgraph = False
    divergences = (INDUCTOR_HALF_BACKWARD,)

    def module_for(self, case: Case) -> str:
        return MODULE_BY_RANK[len(case.input.shape)]

    def build(self, cell):
        super().build(cell)
        # One compiled wrapper per layer instance, kept on the cell (assigning it
        # to the module would register it as a submodule).
        cell.compiled = self.torch.compile(cell.module, fullgraph=self.fullgraph)

    def call(self, cell, x):
        return cell.compiled(x)


class CompiledModuleFullGraph(CompiledModule):
    """``torch.compile(..., fullgraph=True)``: a graph break is an error."""

    name = "torch.compile(nn.BatchNormNd, fullgraph=True)"
    fullgraph = True
    divergences = (
        INDUCTOR_HALF_BACKWARD,
        Divergence(
            id="fullgraph-cumulative-average",
            kind="quirk",
            summary=("momentum=None cannot be compiled with fullgraph=True: the factor 1/num_batches_tracked is "
                     "data-dependent (a graph break), which fullgraph turns into an error"),
            source=("torch/nn/modules/batchnorm.py _BatchNorm.forward (1.0 / float(self.num_batches_tracked)); "
                    "torch.compile docs: fullgraph=True raises on graph breaks"),
            raises=r"data-dependent",
            when=lambda case: case.uses_cumulative_average,
        ),
    )


class CompiledFunctional(_Fresh, FunctionalBatchNorm):
    """``torch.compile(torch.nn.functional.batch_norm)``."""

    name = "torch.compile(F.batch_norm)"
    divergences = (INDUCTOR_HALF_BACKWARD,)

    def batch_norm(self, F):
        return self.torch.compile(F.batch_norm)
