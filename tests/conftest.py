"""Two test tiers, one suite.

- CPU tier (plain `pytest`): kernels run in Triton's interpreter on CPU tensors.
  TRITON_INTERPRET=1 is set here, before any generated module is imported.
- GPU tier (`pytest -m gpu`, on a CUDA machine): the same property tests on the GPU,
  plus the large seed cases. Skipped where there is no CUDA device.

Tests that run in both tiers take the `device` parameter from `tiers.DEVICES`.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=40, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("dev", max_examples=10, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("gpu", max_examples=40, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=_SUPPRESS
)


def _gpu_tier(config: pytest.Config) -> bool:
    return str(config.getoption("markexpr") or "").replace(" ", "") == "gpu"


def pytest_configure(config: pytest.Config) -> None:
    gpu = _gpu_tier(config)
    if not gpu:
        os.environ["TRITON_INTERPRET"] = "1"
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpu" if gpu else "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _gpu_tier(config):
        import torch

        if not torch.cuda.is_available():
            skip = pytest.mark.skip(reason="no CUDA device")
            for item in items:
                item.add_marker(skip)
        return
    skip = pytest.mark.skip(reason="GPU tier: run `pytest -m gpu` on a CUDA machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
