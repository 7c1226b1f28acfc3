"""Registry of backends: name -> module, imported only when asked for.

A backend whose import fails is remembered with its reason, so a user reads
``openvino unavailable: No module named 'openvino'``, never "unknown backend".
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import BackendUnavailableError

LITERT = "litert"
OPENVINO = "openvino"
ONNXRUNTIME = "onnxruntime"

#: Backend name -> module path. The name is also the device-request prefix and log label.
REGISTRY: dict[str, str] = {
    LITERT: "edge_runtime.backends.litert",
    OPENVINO: "edge_runtime.backends.openvino",
    ONNXRUNTIME: "edge_runtime.backends.onnxrt",
}

_failures: dict[str, str] = {}


def get_backend(name: str) -> ModuleType:
    """Import and return backend ``name``; raise ``BackendUnavailableError`` with the reason."""
    if name not in REGISTRY:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(REGISTRY)}", backend=name)
    if name in _failures:
        raise BackendUnavailableError(f"{name} unavailable: {_failures[name]}", backend=name)
    module = importlib.import_module(REGISTRY[name])
    reason = module.unavailable_reason()
    if reason:
        _failures[name] = reason
        raise BackendUnavailableError(f"{name} unavailable: {reason}", backend=name)
    return module


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot be used, or ``None`` when it can."""
    try:
        get_backend(name)
    except BackendUnavailableError as exc:
        return exc.reason
    return None
