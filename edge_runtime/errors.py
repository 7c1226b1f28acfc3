"""One exception hierarchy for the package.

Every error carries the fields a person needs to act on it: the model path, the
backend, the device and the reason. ``str(err)`` puts them on one line, for logs.
"""

from __future__ import annotations

from collections.abc import Sequence


class EdgeRuntimeError(Exception):
    """Base class of every error this package raises on purpose."""

    def __init__(
        self,
        reason: str,
        *,
        path: str | None = None,
        backend: str | None = None,
        device: str | None = None,
        attempts: Sequence[str] = (),
    ) -> None:
        self.reason = reason
        self.path = path
        self.backend = backend
        self.device = device
        #: One line per device tried or passed over, in order (load failures only).
        self.attempts = tuple(attempts)
        super().__init__(self._format())

    def _format(self) -> str:
        where = [
            f"{label}={value}"
            for label, value in (("path", self.path), ("backend", self.backend), ("device", self.device))
            if value
        ]
        text = f"{self.reason} [{', '.join(where)}]" if where else self.reason
        if self.attempts:
            text += "\n  " + "\n  ".join(self.attempts)
        return text


class ModelFileError(EdgeRuntimeError):
    """The model file is missing, unreadable, or not a model of a known format."""


class ModelLoadError(EdgeRuntimeError):
    """The file looked right but the backend refused it (verifier, custom op, delegate, compile).

    Raised by ``load`` when every candidate device failed; ``attempts`` lists each.
    """


class DeviceRequestError(EdgeRuntimeError):
    """A device request string does not parse."""


class BackendUnavailableError(EdgeRuntimeError):
    """A backend's Python package cannot be imported; the reason says why."""


class DeviceUnavailableError(EdgeRuntimeError):
    """No requested device was found usable; ``attempts`` says why for each."""


class InputError(EdgeRuntimeError):
    """An input given to ``infer`` has the wrong count, name, shape or dtype."""


class InferenceError(EdgeRuntimeError):
    """The backend failed while running the model."""


class ArgumentError(EdgeRuntimeError, ValueError):
    """A value given to the package is out of range or unknown (a thread count of 0, a window
    of 0, an unknown key in a source URL or sidecar, a threshold outside its measure's range).

    Also a ``ValueError``, so ``except ValueError`` written against older releases still
    catches it. The CLI reports it as a usage error (exit status 2).
    """


class ModelClosedError(InferenceError):
    """The model (or session) was closed; every backend raises this after ``close()``."""


class SourceError(EdgeRuntimeError):
    """A sensor source that cannot be opened or read for a reason retrying will not fix
    (a path that does not exist and was never opened, a bad recording, a bad URL)."""


class StreamError(EdgeRuntimeError):
    """A stream used the wrong way (``results()`` consumed twice at once), or its reader
    thread did not stop in time."""


class SignatureError(ModelFileError):
    """A model or bundle that is not the signed release it claims to be: no signed manifest,
    a signature that does not verify or was made by a key that is not trusted, a malformed
    manifest, or a file whose sha256 or size differs from the manifest, is missing, or is not
    listed in it (files mixed from two releases). ``path`` names the manifest or the file.

    A ``ModelFileError``: the files are refused before any backend sees them, so a loader
    that passes over devices on ``ModelLoadError`` does not try the next device."""


class VersionError(ModelFileError):
    """A correctly signed release that this runtime will not install: its ``model_version``
    is below the installed one (a downgrade; an equal version is a re-install and allowed),
    or its ``min_runtime_version`` is above this edge_runtime's version."""


class StoreError(EdgeRuntimeError):
    """The model store could not stage, commit or read a release: a full disk (ENOSPC, EFBIG),
    a read-only or missing directory, a broken ``current`` link. ``path`` names the file or
    directory, ``reason`` the step and the system's message. The release that was current
    before the failing call is still current."""


class ModelCrashError(InferenceError):
    """A model run in its own process (``load(..., isolate=True)``) took that process down (a
    native crash: the reason names the signal) or did not answer within its timeout (the
    process was killed). The caller's process is unharmed; the next call starts a new child
    after a back-off, unless the model has crashed too often (``ModelQuarantinedError``)."""


class ModelQuarantinedError(ModelCrashError):
    """A model that crashed its process too often (``Isolation.max_crashes`` within
    ``Isolation.window_s``): it is not started again; load another model (the daemon goes back
    to the last one that served)."""
