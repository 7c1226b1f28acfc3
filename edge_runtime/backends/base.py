"""The contract every backend session keeps.

A session is one loaded model on one device. It is opened by its backend module's
``open_session()``, closed by ``close()`` (idempotent), and used as a context manager.
Optional abilities are flags on ``Capabilities``, never discovered with ``hasattr``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy.typing as npt

from ..futures import RequestPool, serial_pool
from ..tensors import TensorSpec


@dataclass(frozen=True)
class Capabilities:
    """What a session can do beyond the contract.

    ``writable_inputs``: ``input_buffer(i)`` returns memory the next ``run`` reads
    directly, so a caller can write into it without an extra copy.
    """

    writable_inputs: bool = False
    #: ``open_pool`` runs requests in parallel (its own interpreters or infer requests); when
    #: False it runs them one at a time on this session (asynchronous, not parallel).
    parallel_submit: bool = False


class Session(ABC):
    """One model loaded on one device by one backend."""

    #: Registry key, log label and the prefix of device requests (``litert:cpu``).
    backend: str
    #: The device as a request string that would select it again (``openvino:CPU``).
    device: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    capabilities: Capabilities = Capabilities()
    #: Number of operators in the model as this backend sees it (None: unknown).
    op_count: int | None = None
    #: Where the model really runs, as device requests (OpenVINO's EXECUTION_DEVICES, e.g. for
    #: AUTO; the providers ONNX Runtime gave nodes to; LiteRT's accelerator and the CPU); () if unknown.
    execution_devices: tuple[str, ...] = ()
    #: True when every op runs on the device asked for, False when some run elsewhere (the CPU
    #: behind a GPU provider or accelerator, a model not compiled for the Edge TPU), None when the
    #: backend cannot tell.
    fully_accelerated: bool | None = None
    #: One line a person reads on where the ops run ("all 31 nodes on CUDA", "12 of 15 nodes on
    #: TensorRT; 3 on CPU"); "" when unknown.
    placement: str = ""
    #: The compiled-model cache on this load: "hit", "miss", "off" (no ``cache_dir``, or a backend
    #: that compiles nothing), or "openvino" (handed to OpenVINO's own ``CACHE_DIR``).
    compile_cache: str = "off"
    #: The model's path as errors name it (set by each backend's constructor).
    _where: str = ""

    @abstractmethod
    def run(self, arrays: list[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """Run once on ``arrays`` (one per input, already of the input's dtype and shape).

        The inputs are copied into the backend's own buffers; the returned outputs are
        new arrays owned by the caller (one copy each out of the backend).
        """

    def run_prepared(self) -> list[npt.NDArray[Any]]:
        """Run on what was written into ``input_buffer``; outputs as in ``run``."""
        raise NotImplementedError(f"{self.backend} sessions have no writable input buffers")

    def invoke(self) -> None:
        """Run on what was written into ``input_buffer``; read results with ``output_view``."""
        raise NotImplementedError(f"{self.backend} sessions have no writable input buffers")

    def output_view(self, index: int) -> npt.NDArray[Any]:
        """A read-only view of output ``index`` after ``invoke``: valid until this session runs
        again; drop it before then (LiteRT refuses to invoke while one is alive)."""
        raise NotImplementedError(f"{self.backend} sessions have no output views")

    def input_buffer(self, index: int) -> npt.NDArray[Any]:
        """A writable view of input ``index``'s memory (see ``Capabilities.writable_inputs``)."""
        raise NotImplementedError(f"{self.backend} sessions have no writable input buffers")

    def open_pool(self, workers: int | None = None) -> RequestPool:
        """A pool for ``submit`` (see ``edge_runtime.futures``), owned by the caller (close it
        before this session). The default: one worker running this session's own ``run``, so
        no parallelism, and the caller must not run this session while requests are pending;
        ``workers`` is ignored. Backends that run in parallel override it and set
        ``Capabilities.parallel_submit``."""
        return serial_pool(self.run, path=self.where, backend=self.backend, device=self.device)

    @property
    def where(self) -> str:
        """The model's path, for errors."""
        return self._where

    @abstractmethod
    def close(self) -> None:
        """Release the interpreter or compiled model. Safe to call twice."""

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
