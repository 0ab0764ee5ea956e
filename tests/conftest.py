"""Shared pytest configuration."""

# ---- hypothesis profiles --------------------------------------------------------------------
# "ci" is the default: derandomized, so every run draws the same examples (tests are
# deterministic). "dev" explores more (HYPOTHESIS_PROFILE=dev pytest ...).
import os as _os

from hypothesis import settings as _hyp_settings

_hyp_settings.register_profile("ci", deadline=None, max_examples=50, derandomize=True, print_blob=True,
                               database=None)
_hyp_settings.register_profile("dev", deadline=None, max_examples=200)
_hyp_settings.load_profile(_os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# ---- torch threads ----------------------------------------------------------------------------
# One thread: the tests' tensors are small, results are deterministic, and OpenMP threads spinning
# against another busy process on a 2-core machine made steps 10-40x slower (measured).
import torch as _torch

_torch.set_num_threads(1)
