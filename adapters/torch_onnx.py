"""PyTorch -> ONNX export, run in ONNX Runtime: the exported graph as a user ships it.

The layer with the case's initial state is exported (weights and running
statistics carried as initializers, exactly as in an exported file) in the
mode of the case's single forward step, and the ONNX file is run by
``onnxruntime`` with its default graph optimisations; its output is the
observation. An exported file is stateless between runs and has no backward,
so only one-forward programs are expressible (the rest are unsupported), and
only ``output`` is observed.

Exporters (torch 2.13.0, ``torch/onnx/__init__.py``):

* TorchScript-based: ``torch.onnx.export(..., dynamo=False, training=TrainingMode.TRAINING|EVAL)``
  writes ``BatchNormalization(training_mode=1|0, momentum=1-m, epsilon)``
  (``torch/onnx/_internal/torchscript_exporter/symbolic_opset15.py``).
* dynamo-based: ``torch.onnx.export(..., dynamo=True)``; the mode comes from
  ``module.train()``; the onnxscript optimizer rewrites BatchNormalization to
  inference (training_mode absent) — a train()-mode module is exported as an
  inference graph (onnxscript issue #1791, "BatchNorm training=True -> False").
"""

from __future__ import annotations

import importlib
import io
import warnings

from bnconform.catalogue import Case, Forward

from ._torch import MODULE_BY_RANK, TorchAdapter



class _OnnxExport(TorchAdapter):
    observables = frozenset({"output"})
    dynamo = False

    def framework_version(self) -> str:
        """torch's PEP 440 version (the exporter is torch's); the runtime stack is :meth:`framework_build`."""
        return str(importlib.import_module("torch").__version__)

    def framework_build(self) -> str | None:
        ort = importlib.import_module("onnxruntime")
        onnx = importlib.import_module("onnx")
        return f"onnx {onnx.__version__}, onnxruntime {ort.__version__}"

    def capabilities(self, case: Case) -> str | None:
        reason = super().capabilities(case)
        if reason:
            return reason
        if len(case.steps) != 1 or not isinstance(case.steps[0], Forward):
            return ("an exported ONNX graph is one stateless forward (no backward, no optimizer step, no "
                    "running-statistic state carried between runs): only one-forward programs are expressible")
        if case.input.dtype == "bfloat16":
            return "onnxruntime's CPU BatchNormalization has no bfloat16 kernel"
        if len(case.input.shape) not in MODULE_BY_RANK:
            return f"no torch.nn.BatchNorm module for rank {len(case.input.shape)}"
        return None

    def export(self, module, x, train: bool) -> bytes:
        torch = self.torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self.dynamo:
                program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
                return program.model_proto.SerializeToString()
            buf = io.BytesIO()
            mode = torch.onnx.TrainingMode.TRAINING if train else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(module, (x,), buf, dynamo=False, training=mode, opset_version=15)
            return buf.getvalue()

    def build(self, cell):
        cell.module = self.build_module(cell.case, cell.arrays, MODULE_BY_RANK[len(cell.case.input.shape)])

    def forward(self, cell, x, mode):
        import onnxruntime as ort

        train = mode == "train"
        cell.module.train(train)
        model = self.export(cell.module, self.tensor(x, cell.dtype), train)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]


class TorchScriptExport(_OnnxExport):
    """``torch.onnx.export(dynamo=False)`` (TorchScript-based exporter, opset 15) -> onnxruntime."""

    name = "torch.onnx.export(dynamo=False) -> onnxruntime"


class DynamoExport(_OnnxExport):
    """``torch.onnx.export(dynamo=True)`` -> onnxruntime."""

    name = "torch.onnx.export(dynamo=True) -> onnxruntime"
    dynamo = True
