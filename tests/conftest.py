"""Shared test settings: deterministic, float32, few threads (CI has 2 cores)."""

from __future__ import annotations

import os

# Other processes share these cores (CI, load tests): spinning OpenMP workers would
# waste them, so worker threads sleep when idle. Must be set before torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
