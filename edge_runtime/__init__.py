"""edge_runtime: run int8 LiteRT/TFLite and OpenVINO models on the best device a box has.

    >>> import edge_runtime
    >>> with edge_runtime.load("models/digits_cnn_int8.tflite") as model:
    ...     scores = model.infer(x)[0]
    ...     result = model.classify(x)       # label, confidence, exit_index, stage_us

``load`` returns a ``Runner`` (a ``Model`` for a file, an ``EarlyExitModel`` for a bundle
directory); ``load_model`` and ``load_bundle`` return the concrete classes. Importing
the package imports no backend: LiteRT and OpenVINO are imported when first used.
See ``devices`` and the README for the device request grammar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .backends.isolation_policy import Isolation
from .device_info import Device
from .devices import Selection, devices, parse_request, probe, select
from .errors import (
    ArgumentError,
    BackendUnavailableError,
    DeviceRequestError,
    DeviceUnavailableError,
    EdgeRuntimeError,
    InferenceError,
    InputError,
    ModelClosedError,
    ModelCrashError,
    ModelFileError,
    ModelLoadError,
    ModelQuarantinedError,
    SignatureError,
    SourceError,
    StoreError,
    StreamError,
    VersionError,
)
from .loader import load
from .model import Model, load_model
from .result import Classification
from .runner import Runner
from .tensors import Quantization, TensorSpec, dequantize, quantize

if TYPE_CHECKING:
    from .early_exit import EarlyExitModel, EarlyExitResult, load_bundle

#: Imported on first use (PEP 562): the bundle modules are not needed to run a plain model.
_LAZY = {"EarlyExitModel", "EarlyExitResult", "load_bundle"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import early_exit

        value = getattr(early_exit, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edge_runtime' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "ArgumentError",
    "BackendUnavailableError",
    "Classification",
    "Device",
    "DeviceRequestError",
    "DeviceUnavailableError",
    "EarlyExitModel",
    "EarlyExitResult",
    "EdgeRuntimeError",
    "InferenceError",
    "InputError",
    "Isolation",
    "Model",
    "ModelClosedError",
    "ModelCrashError",
    "ModelFileError",
    "ModelLoadError",
    "ModelQuarantinedError",
    "Quantization",
    "Runner",
    "Selection",
    "SignatureError",
    "SourceError",
    "StoreError",
    "StreamError",
    "TensorSpec",
    "VersionError",
    "__version__",
    "dequantize",
    "devices",
    "load",
    "load_bundle",
    "load_model",
    "parse_request",
    "probe",
    "quantize",
    "select",
]
