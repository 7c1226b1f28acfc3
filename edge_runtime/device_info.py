"""The plain record of one accelerator, shared by ``devices`` and the backends.

Kept apart from ``devices.py`` so that backends can build these records without
importing the selection logic (backends are an inner layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("cpu", "gpu", "npu", "tpu", "fpga", "other")


def openvino_kind(name: str) -> str:
    """The kind of an OpenVINO device name (``GPU.1`` -> ``gpu``); unknown names are ``other``."""
    base = name.split(".")[0].upper()
    return {"CPU": "cpu", "GPU": "gpu", "NPU": "npu", "FPGA": "fpga", "VPU": "npu", "MYRIAD": "npu"}.get(base, "other")


@dataclass(frozen=True)
class Device:
    """One accelerator as a backend sees it.

    ``name`` is backend-local (``cpu``, ``edgetpu``, ``CPU``, ``GPU.0``); ``request``
    is the string that selects it. ``int8`` is ``None`` when the device does not say.
    ``available`` is False for devices found but unusable (library present, device
    absent; plugin that fails to start), with the reason in ``reason``. A backend
    that cannot be imported appears as one unavailable record with an empty name.
    """

    backend: str
    name: str
    kind: str
    full_name: str
    int8: bool | None = None
    available: bool = True
    reason: str = ""
    capabilities: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()

    @property
    def request(self) -> str:
        return f"{self.backend}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "request": self.request if self.name else self.backend,
            "backend": self.backend,
            "name": self.name,
            "kind": self.kind,
            "full_name": self.full_name,
            "int8": self.int8,
            "available": self.available,
            "reason": self.reason,
            "capabilities": list(self.capabilities),
            "options": dict(self.options),
        }


def cpuinfo_model_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo (``model name``, or ``Model``/``Hardware`` on Arm
    boards), read without spawning a process; None where there is no such line or file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None
