"""A pytest plugin for running timm's own model suite on a slow machine: every test's
``@pytest.mark.timeout(N)`` is raised to at least ``PPCM_TIMM_SUITE_TIMEOUT`` seconds (default
1200), so that a correct model is not failed for a loaded 2-core machine, and a hung test still
ends. Nothing is deselected. Our cfgs are ``fixed_input_size``: the 224x224 models run at full
size, and ``test_model_backward_fx`` of ppconvmixer_1536_20 took 159-168 s against its
hard-coded 120 s under a load of 7 on 2 cores (timm's ``TIMEOUT`` variable does not reach that
test's limit).
"""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    floor = float(os.environ.get("PPCM_TIMM_SUITE_TIMEOUT", "1200"))
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is not None and marker.args and float(marker.args[0]) < floor:
            item.add_marker(pytest.mark.timeout(floor), append=False)  # the closest one wins
