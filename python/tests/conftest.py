"""Fixtures: a runtime on each transfer path (both paths run every test).

A missing Vulkan device fails the tests under CI (`CI` set), and skips them elsewhere.
"""

import os

import pytest

import vkhmm


@pytest.fixture(scope="module", params=["direct", "staged"])
def rt(request):
    try:
        return vkhmm.Runtime(transfer=request.param)
    except vkhmm.DeviceError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Vulkan device: {e}")
