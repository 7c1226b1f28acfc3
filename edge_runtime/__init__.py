"""edge_runtime: run int8 LiteRT/TFLite and OpenVINO models on the best device a box has.

    >>> import edge_runtime
    >>> with edge_runtime.load("models/digits_cnn_int8.tflite") as model:
    ...     scores = model.infer(x)[0]

See ``load``, ``Model``, ``devices`` and the README for the device request grammar.
"""

from __future__ import annotations

from .device_info import Device
from .devices import Selection, devices, parse_request, probe, select
from .early_exit import EarlyExitModel, EarlyExitResult, load_bundle
from .errors import (
    BackendUnavailableError,
    DeviceRequestError,
    DeviceUnavailableError,
    EdgeRuntimeError,
    InferenceError,
    InputError,
    ModelFileError,
    ModelLoadError,
)
from .model import Model, load
from .tensors import Quantization, TensorSpec, dequantize, quantize

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "Device",
    "DeviceRequestError",
    "DeviceUnavailableError",
    "EarlyExitModel",
    "EarlyExitResult",
    "EdgeRuntimeError",
    "InferenceError",
    "InputError",
    "Model",
    "ModelFileError",
    "ModelLoadError",
    "Quantization",
    "Selection",
    "TensorSpec",
    "__version__",
    "dequantize",
    "devices",
    "load",
    "load_bundle",
    "parse_request",
    "probe",
    "quantize",
    "select",
]
