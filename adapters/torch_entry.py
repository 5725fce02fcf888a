"""More PyTorch entry points to BatchNorm (issue 20), torch 2.13.0 CPU.

Rows (each translates the catalogue's program into the entry point's own idiom;
the step semantics are :mod:`bnconform.drive`'s):

* ``torch.nn.LazyBatchNormNd`` (``torch/nn/modules/batchnorm.py``
  ``_LazyNormBase``): ``num_features`` inferred at the first forward, which
  materialises ``weight``/``bias``/``running_mean``/``running_var`` with their
  defaults (1, 0, 0, 1) via ``reset_parameters``. A case with the default
  initial state relies on that; any other initial state is loaded with
  ``load_state_dict`` before the first forward (the lazy modules' load hook
  materialises from the state dict, ``torch/nn/modules/lazy.py``), as a user
  restores a checkpoint.
* ``torch.func.functional_call(nn.BatchNormNd, {params, buffers}, x)``
  (``torch/_functorch/functional_call.py``): the parameters and the running
  buffers live in the caller's dicts; the module's in-place running update and
  ``num_batches_tracked.add_(1)`` write into the tensors passed.
* ``torch.jit.script(nn.BatchNormNd)``: the scripted module shares its
  parameters and buffers with the eager one; ``.train()``/``.eval()`` switch
  the scripted ``training`` attribute.
* ``torch.jit.trace(nn.BatchNormNd)``: a trace records the ops of ONE mode
  (``self.training`` is read in Python at trace time), so each mode is traced
  once, on its first batch, with ``check_trace=False``; the traced modules
  share the eager module's tensors. Tracing RUNS the module (a train trace
  updates the running statistics and the counter): the state is restored
  after tracing, as when a trace is taken from a checkpoint.
* ``torch.export.export(nn.BatchNormNd)`` -> ``ExportedProgram.module()``:
  the mode is fixed at export (``.train()``/``.eval()`` on the exported module
  raise ``NotImplementedError: Calling eval() is not supported yet``), so one
  program is exported per mode; the unlifted modules share the eager module's
  tensors and apply the buffer mutations (running update, counter) in place.
"""

from __future__ import annotations

import warnings

from bnconform.catalogue import OBSERVABLES, Case

from ._torch import MODULE_BY_RANK, LeafParameters, TorchAdapter
from .torch_nn import _TorchModule

#: The catalogue's default initial state (what a lazy module materialises itself).
_DEFAULTS = {"running_mean": 0.0, "running_var": 1.0, "weight": 1.0, "bias": 0.0}


class _ByRank(_TorchModule):
    """A ``torch.nn.BatchNorm{1,2,3}d`` chosen by the input rank."""

    ranks = (2, 3, 4, 5)

    def module_for(self, case: Case) -> str:
        return MODULE_BY_RANK[len(case.input.shape)]


class LazyBatchNorm(_ByRank):
    name = "torch.nn.LazyBatchNormNd"

    def build(self, cell):
        torch, case, L = self.torch, cell.case, cell.case.layer
        lazy = getattr(torch.nn, "Lazy" + self.module_for(case))
        cell.module = lazy(eps=L.eps, momentum=L.momentum, affine=L.affine,
                           track_running_stats=L.track_running_stats, dtype=getattr(torch, cell.param_dtype))
        wanted = {n: cell.arrays.init[n] for n in _DEFAULTS
                  if (n.startswith("running") and L.track_running_stats) or (not n.startswith("running") and L.affine)}
        if any((a != _DEFAULTS[n]).any() for n, a in wanted.items()):
            state = {n: self.tensor(a, cell.param_dtype) for n, a in wanted.items()}
            if L.track_running_stats:
                state["num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
            cell.module.load_state_dict(state)
        for name in cell.frozen:  # an uninitialized parameter refuses requires_grad_(); the attribute is kept
            getattr(cell.module, name).requires_grad = False

    def state(self, cell):
        from torch.nn.parameter import is_lazy

        # Before the first forward the parameters are uninitialized: nothing to read yet.
        return {n: v for n, v in super().state(cell).items() if not is_lazy(v)}


class FunctionalCall(LeafParameters, TorchAdapter):
    name = "torch.func.functional_call(nn.BatchNormNd)"
    observables = frozenset(OBSERVABLES)

    def capabilities(self, case: Case) -> str | None:
        reason = super().capabilities(case)
        if reason:
            return reason
        if len(case.input.shape) not in MODULE_BY_RANK:
            return f"no torch.nn.BatchNorm module for rank {len(case.input.shape)}"
        return None

    def build(self, cell):
        case = cell.case
        cell.module = self.build_module(case, cell.arrays, MODULE_BY_RANK[len(case.input.shape)])
        cell.params = {n: p.detach().clone().requires_grad_(n in cell.trainable)
                       for n, p in cell.module.named_parameters()}
        cell.buffers = {n: b.detach().clone() for n, b in cell.module.named_buffers()}

    def forward(self, cell, x, mode):
        cell.module.train(mode == "train")
        cell.x = self.tensor(x, cell.dtype).requires_grad_(True)
        cell.y = self.torch.func.functional_call(cell.module, {**cell.params, **cell.buffers}, (cell.x,))
        return cell.y

    def state(self, cell):
        return {**cell.buffers, **cell.params}


class JitScript(_ByRank):
    name = "torch.jit.script(nn.BatchNormNd)"

    def build(self, cell):
        super().build(cell)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.jit.script is deprecated"
            cell.module = self.torch.jit.script(cell.module)


class JitTrace(_ByRank):
    name = "torch.jit.trace(nn.BatchNormNd)"

    def capabilities(self, case: Case) -> str | None:
        if case.uses_cumulative_average:
            return ("torch.jit.trace records momentum=None's factor 1/num_batches_tracked as a trace-time "
                    "constant (TracerWarning: 'Converting a tensor to a Python float might cause the trace to "
                    "be incorrect'): the traced module averages with a fixed factor, not cumulatively")
        return super().capabilities(case)

    def build(self, cell):
        super().build(cell)
        cell.traced = {}

    def call(self, cell, x):
        torch, m = self.torch, cell.module
        if m.training not in cell.traced:
            saved = {n: b.detach().clone() for n, b in m.named_buffers()}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation and TracerWarnings
                cell.traced[m.training] = torch.jit.trace(m, (x.detach(),), check_trace=False)
            with torch.no_grad():  # tracing ran the module once: undo its running update
                for n, b in m.named_buffers():
                    b.copy_(saved[n])
        return cell.traced[m.training](x)


class TorchExport(_ByRank):
    name = "torch.export.export(nn.BatchNormNd).module()"

    def capabilities(self, case: Case) -> str | None:
        if case.uses_cumulative_average:
            return ("torch.export cannot export a train-mode momentum=None BatchNorm: the factor "
                    "1.0 / float(self.num_batches_tracked) (torch/nn/modules/batchnorm.py) reads a buffer's value "
                    "(measured: GuardOnDataDependentSymNode 'Could not extract specialized integer from "
                    "data-dependent expression u0')")
        return super().capabilities(case)

    def build(self, cell):
        super().build(cell)
        cell.programs = {}

    def call(self, cell, x):
        m = cell.module
        if m.training not in cell.programs:
            ep = self.torch.export.export(m, (x.detach(),))
            cell.programs[m.training] = ep.module()
        return cell.programs[m.training](x)


class _Block(TorchAdapter):
    """A composite case's block ``nn.ConvNd(padding='same' as (k - 1) / 2) / nn.Linear -> nn.BatchNormNd``
    (``case.pre``), the conv/linear weights copied from ``arrays.pre``; forward-only programs."""

    observables = frozenset(OBSERVABLES)
    blocks = frozenset({"conv", "linear"})

    def capabilities(self, case: Case) -> str | None:
        if case.pre is None:
            return (f"{self.name} is the Conv/Linear -> BatchNorm block of the composite theme; this case has "
                    "no preceding layer (the BatchNorm alone runs on the torch.nn.BatchNormNd rows)")
        return super().capabilities(case)

    def build(self, cell):
        torch, case, pre = self.torch, cell.case, cell.case.pre
        c_in, c_out, dt = case.input.shape[1], case.layer.num_features, getattr(torch, cell.dtype)
        if pre.kind == "linear":
            cell.pre = torch.nn.Linear(c_in, c_out, bias=pre.bias, dtype=dt)
        else:
            conv = getattr(torch.nn, f"Conv{len(pre.kernel)}d")
            cell.pre = conv(c_in, c_out, tuple(pre.kernel), padding=tuple((k - 1) // 2 for k in pre.kernel),
                            bias=pre.bias, dtype=dt)
        with torch.no_grad():
            cell.pre.weight.copy_(self.tensor(cell.arrays.pre["weight"], cell.dtype))
            if pre.bias:
                cell.pre.bias.copy_(self.tensor(cell.arrays.pre["bias"], cell.dtype))
        cell.module = self.build_module(case, cell.arrays, MODULE_BY_RANK[len(case.input.shape)])

    def forward(self, cell, x, mode):
        cell.pre.train(mode == "train")
        cell.module.train(mode == "train")
        with self.torch.no_grad():
            return cell.module(cell.pre(self.tensor(x, cell.dtype)))

    def state(self, cell):
        m = cell.module
        names = ("running_mean", "running_var", "num_batches_tracked", "weight", "bias")
        return {n: v for n in names if (v := getattr(m, n, None)) is not None}


class ConvBatchNorm(_Block):
    name = "torch.nn.ConvNd/Linear -> BatchNormNd"


class FusedConvBatchNorm(_Block):
    """``torch/nn/utils/fusion.py``: ``fuse_conv_bn_eval(conv, bn)`` / ``fuse_linear_bn_eval(linear, bn)``
    return ONE conv / linear with ``W' = W * (gamma * rsqrt(var + eps))`` and ``b' = (b - mean) *
    rsqrt(var + eps) * gamma + beta`` (``fuse_conv_bn_weights``); both assert eval mode
    ("Fusion only for eval!"). An ``eval`` forward runs the fused layer built from the current state (what
    a deployment does after training); ``train`` and ``train_global_stats`` (a training graph) run the
    unfused block: folding in training is refused by the function itself."""

    name = "torch.nn.utils.fusion.fuse_conv_bn_eval/fuse_linear_bn_eval"

    def capabilities(self, case: Case) -> str | None:
        if case.pre is not None and not case.layer.track_running_stats:
            return ("fuse_conv_bn_eval / fuse_linear_bn_eval fold the running statistics; without them "
                    "(track_running_stats=False) the function refuses (measured: AssertionError "
                    "'bn.running_mean and bn.running_var must not be None'): nothing to fold")
        return super().capabilities(case)

    def forward(self, cell, x, mode):
        if mode != "eval":
            return super().forward(cell, x, mode)
        from torch.nn.utils import fusion

        cell.pre.eval()
        cell.module.eval()
        fuse = fusion.fuse_linear_bn_eval if cell.case.pre.kind == "linear" else fusion.fuse_conv_bn_eval
        with self.torch.no_grad():
            return fuse(cell.pre, cell.module)(self.tensor(x, cell.dtype))
