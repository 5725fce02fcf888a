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

from bnconform.catalogue import Case

from .torch_functional import FunctionalBatchNorm
from ._torch import MODULE_BY_RANK
from .torch_nn import _TorchModule



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


class CompiledFunctional(_Fresh, FunctionalBatchNorm):
    """``torch.compile(torch.nn.functional.batch_norm)``."""

    name = "torch.compile(F.batch_norm)"

    def batch_norm(self, F):
        return self.torch.compile(F.batch_norm)
