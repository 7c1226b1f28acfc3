"""Which TFLite interpreter module is in use (CI runs the suite once more under tflite-runtime)."""

from __future__ import annotations

import os

import pytest
from conftest import backend_available


@pytest.mark.skipif(not backend_available("litert"), reason="no TFLite interpreter installed")
def test_runtime_module_is_the_expected_one() -> None:
    from edge_runtime.backends.litert import runtime_info

    info = runtime_info()
    expected = os.environ.get("EDGE_RUNTIME_EXPECT_TFLITE", "ai_edge_litert")
    assert info["module"].split(".")[0] == expected, info
    assert info["version"] != "unknown"
