"""The composite theme (Conv -> BN, Linear -> BN): the oracle computes the
preceding layer, and the tolerance derived for folding (``compare.growth``)
accepts a correct float32 fold and rejects wrong ones."""

from pathlib import Path

import numpy as np
import pytest

from bnconform.arrays import generate
from bnconform.catalogue import load_catalogue
from bnconform.compare import FOLD_ROUNDINGS, growth
from bnconform.engine import run_cell
from bnconform.oracle import pre_forward

from .numpy_bn import NumpyBatchNorm

ROOT = Path(__file__).resolve().parents[1]
COMPOSITE = [c for c in load_catalogue([ROOT / "cases"], ROOT).cases if c.pre is not None]


class FoldedNumpy(NumpyBatchNorm):
    """Eval forwards fold BN into the conv / linear in float32, as
    ``torch.nn.utils.fusion.fuse_conv_bn_weights`` writes it; train forwards unfolded."""

    name = "numpy-folded"
    eps_in_fold = True
    fold_var_offset = 0.0

    def forward(self, cell, x, mode):
        L = cell.case.layer
        if mode == "train" or not L.track_running_stats:
            return super().forward(cell, x, mode)
        f32 = np.float32
        rv = cell.rv.astype(f32) + f32(self.fold_var_offset)
        rsqrt = (f32(1) / np.sqrt(rv + (f32(L.eps) if self.eps_in_fold else f32(0)))).astype(f32)
        scale = (cell.w.astype(f32) * rsqrt).astype(f32)
        w = cell.arrays.pre["weight"].astype(f32)
        wf = (w * scale.reshape([-1] + [1] * (w.ndim - 1))).astype(f32)
        b0 = cell.arrays.pre.get("bias", np.zeros(L.num_features, f32)).astype(f32)
        bf = ((b0 - cell.rm.astype(f32)) * rsqrt * cell.w.astype(f32) + cell.b.astype(f32)).astype(f32)
        saved = cell.arrays.pre
        cell.arrays.pre = {"weight": wf, "bias": bf}
        try:
            return self._pre(cell, x.astype(f32))
        finally:
            cell.arrays.pre = saved


class FoldForgetsEps(FoldedNumpy):
    name = "numpy-folded-without-eps"
    eps_in_fold = False


class FoldUsesUnbiasedVar(FoldedNumpy):
    """A fold whose variance is off by a relative 1/m (a biased/unbiased mix-up)."""

    name = "numpy-folded-var-off"

    def forward(self, cell, x, mode):
        self.fold_var_offset = float(np.mean(cell.rv)) / 63.0
        return super().forward(cell, x, mode)


def test_composite_theme_present():
    assert len(COMPOSITE) >= 8 and {c.pre.kind for c in COMPOSITE} == {"conv", "linear"}


def test_pre_forward_by_hand():
    x = np.arange(6, dtype=float).reshape(1, 1, 6)
    z, mag = pre_forward("conv", x, np.array([[[1.0, -2.0, 3.0]]]), np.array([0.5]))
    # z[p] = x[p-1] - 2 x[p] + 3 x[p+1] + 0.5 with zero padding
    assert z.ravel().tolist() == [3.5, 4.5, 6.5, 8.5, 10.5, -5.5]
    assert mag.ravel().tolist() == [3.5, 8.5, 14.5, 20.5, 26.5, 14.5]
    z, _ = pre_forward("linear", np.array([[1.0, 2.0]]), np.array([[1.0, 1.0], [2.0, -1.0]]), None)
    assert z.tolist() == [[3.0, 0.0]]


def test_growth_states_the_fold():
    case = next(c for c in COMPOSITE if c.id == "conv-bn-eval-pretrained")
    assert growth(case) == pytest.approx(np.sqrt(2 * 8 * 8) + np.sqrt(3 * 9) + FOLD_ROUNDINGS)


@pytest.mark.parametrize("case", COMPOSITE, ids=lambda c: c.id)
def test_float32_fold_conforms(case):
    r = run_cell(case, FoldedNumpy(), "0")
    assert r.verdict == "conforms", r.reason


@pytest.mark.parametrize("mutant", [FoldForgetsEps, FoldUsesUnbiasedVar], ids=lambda m: m.name)
def test_wrong_fold_fails(mutant):
    verdicts = {c.id: run_cell(c, mutant(), "0").verdict for c in COMPOSITE}
    assert "fails" in verdicts.values(), verdicts
    assert set(verdicts.values()) <= {"fails", "conforms"}
