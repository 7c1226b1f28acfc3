"""The one contract every outer layer holds: ``Runner``.

``edge_runtime.load`` returns a ``Runner``: a plain ``Model`` (one file) or an
``EarlyExitModel`` (a bundle). Streams, the CLI and the daemon use only what is here;
``Model`` adds the raw paths (``infer_raw``, ``infer_in_place``) and ``EarlyExitModel``
its thresholds and deadlines.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .result import Classification
from .tensors import TensorSpec

if TYPE_CHECKING:
    from .manifest import VerifiedManifest

#: What ``infer`` accepts: one array (single-input models), a list in input order, or name -> array.
Inputs = npt.ArrayLike | Sequence[npt.ArrayLike] | Mapping[str, npt.ArrayLike]

#: Writes one input straight into the runner's input tensor: ``fill(view)``. The view has the
#: input's own dtype and shape and is valid only during the call: keep no reference to it.
Fill = Callable[[npt.NDArray[Any]], None]


@runtime_checkable
class Runner(Protocol):
    """A model or an early-exit bundle, loaded on one device.

    ``inputs``/``outputs``: what ``infer`` takes and returns (a bundle's one output is its
    scores). ``labels``: class names (from a model's JSON sidecar or a bundle's manifest),
    or None. ``backend``/``device``: where it runs, ``device`` being a request string that
    selects it again; ``reason``: why; ``attempts``: every device passed over before it.
    """

    @property
    def path(self) -> Path: ...
    @property
    def format(self) -> str: ...
    @property
    def backend(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def attempts(self) -> tuple[str, ...]: ...
    @property
    def inputs(self) -> tuple[TensorSpec, ...]: ...
    @property
    def outputs(self) -> tuple[TensorSpec, ...]: ...
    @property
    def labels(self) -> tuple[str, ...] | None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def release(self) -> VerifiedManifest | None:
        """The signed release it was loaded from (``load(..., trusted_keys=)``), else None."""

    def infer(self, x: Inputs) -> list[npt.NDArray[np.float32]]:
        """Float (or the input's own dtype) in, one new float32 array per output out."""
        ...

    def classify(self, x: Inputs, *, deadline_ms: float | None = None) -> Classification:
        """Run once and name the class. ``deadline_ms`` matters to bundles only."""
        ...

    def classify_in_place(self, fill: Fill, *, deadline_ms: float | None = None) -> Classification:
        """The streaming path: ``fill`` writes the (already quantized) input straight into the
        input tensor; then run and name the class. No copy of the input is made."""
        ...

    def submit(self, x: Inputs) -> Future[list[npt.NDArray[np.float32]]]:
        """Run asynchronously: a future of what ``infer(x)`` returns. A bad input raises
        ``InputError`` here; a failure while running settles this future only
        (``InferenceError``). See ``edge_runtime.futures`` for ordering, back-pressure, close."""
        ...

    def submit_classify(self, x: Inputs) -> Future[Classification]:
        """``submit``, then name the class as ``classify`` does."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """Everything ``edge-runtime info`` shows, as plain data."""
        ...

    def describe(self) -> str:
        """One line for people: what runs where."""
        ...

    def close(self) -> None:
        """Release the backend. Safe to call twice; afterwards every call raises ``ModelClosedError``."""
        ...

    def __enter__(self) -> Runner: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
