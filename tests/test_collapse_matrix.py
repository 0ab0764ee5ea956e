"""The collapse matrix (issue 15): every quantizer x weight bits {1, 2, 4} x activation bits {32, 2},
from scratch and from a float run's weights, trained with the default recipe (no --lr, no
--optimizer: lowbit.recipes decides) must learn.

Floors, on LeNet-5 / digits (10 classes, 360 test images), one thread, 6 epochs from scratch or
3 epochs from the float run (itself 6 epochs):
- 1-bit weights: at least 3x chance (30%). Binary LeNet-5 with float first/last layers learns far
  more than that in a few epochs (70-98% measured), so 30% only catches a collapse, not a weak
  recipe; the robustness benchmark reports the real figures.
- 2 and 4 bits: at least 80% of the float network's accuracy trained the same way (the same
  epochs from scratch; the float run itself for the from-float cells). The weakest cell, WRPN w2
  from scratch, sits at 77% at 4 epochs and 84% at 6 (float 98%): WRPN's 2-bit grid is {-1, 0, 1}
  at max|w|, so most weights start on 0.
A combination a quantizer does not define (LSQ at 1 bit) must be refused with a clear error
before anything is trained. (TWN above 2 bits is WRPN's symmetric uniform grid at max|w|.)
"""

from __future__ import annotations

import itertools

import pytest

from lowbit.errors import BitwidthError
from lowbit.runs.train_run import TrainOptions, run_train
from lowbit.train import Reporter

QUIET = Reporter(quiet=True)
SCRATCH_EPOCHS, FLOAT_EPOCHS = 6, 3
QUANTIZERS = ("dorefa", "wrpn", "pact", "lsq", "twn")
UNSUPPORTED = {("lsq", 1)}
CELLS = [(q, w, a, start) for q, w, a, start in itertools.product(QUANTIZERS, (1, 2, 4), (32, 2), ("scratch", "float"))]


def _options(out, **kw) -> TrainOptions:
    return TrainOptions(**{"model": "lenet5", "dataset": "digits", "epochs": SCRATCH_EPOCHS, "seed": 0,
                           "threads": 1, "out": str(out), **kw})


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("collapse") / "float"
    result = run_train(_options(out), reporter=QUIET)
    return str(out), result["accuracy"]


def floor(wbits: int, float_accuracy: float) -> float:
    return 0.3 if wbits == 1 else 0.8 * float_accuracy


@pytest.mark.slow
@pytest.mark.parametrize("quantizer,wbits,abits,start", CELLS, ids=[f"{q}-w{w}a{a}-{s}" for q, w, a, s in CELLS])
def test_default_recipe_learns(quantizer, wbits, abits, start, float_run, tmp_path):
    float_dir, float_accuracy = float_run
    options = _options(tmp_path / "run", quantizer=quantizer, wbits=wbits, abits=abits,
                       init=float_dir if start == "float" else None,
                       epochs=FLOAT_EPOCHS if start == "float" else SCRATCH_EPOCHS)
    if (quantizer, wbits) in UNSUPPORTED:
        with pytest.raises(BitwidthError, match=f"{quantizer} bitwidth {wbits}"):
            run_train(options, reporter=QUIET)
        assert not (tmp_path / "run").exists()  # refused before a folder was made
        return
    result = run_train(options, reporter=QUIET)
    assert result["accuracy"] >= floor(wbits, float_accuracy), (
        f"{quantizer} w{wbits}a{abits} from {start}: {100 * result['accuracy']:.1f}% "
        f"(float {100 * float_accuracy:.1f}%), health {result['health']['failed']}")
    assert result["health"]["ok"], result["health"]
