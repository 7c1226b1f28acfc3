"""systemd's notify protocol (``Type=notify``), without libsystemd.

A service tells systemd how it is doing by sending datagrams of ``KEY=VALUE`` lines to the
socket named in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for Linux's abstract namespace):
``READY=1`` once it serves, ``WATCHDOG=1`` while it makes progress, ``STOPPING=1`` on the
way out, ``STATUS=...`` for ``systemctl status``. With no ``$NOTIFY_SOCKET`` (not started by
systemd) every call does nothing. The watchdog interval comes from ``$WATCHDOG_USEC`` (for
this process only when ``$WATCHDOG_PID`` is unset or is our pid); ping at about half of it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from ..errors import EdgeRuntimeError


class Notifier:
    """Sends notify messages to one socket. Owns its datagram socket; ``close()`` releases it."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        #: How often systemd expects ``WATCHDOG=1``, in seconds (None: no watchdog configured).
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        if address:
            if not (address.startswith("/") or address.startswith("@")):
                raise EdgeRuntimeError(f"NOTIFY_SOCKET {address!r} is neither a path nor an @abstract name")
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._target = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd set up for this process (a no-op one outside systemd)."""
        env = os.environ if environ is None else environ
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"]) or None
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message (``send(READY=1, STATUS="serving")``) without blocking; False if there
        is no socket or the send failed (systemd gone, or its socket full: a service keeps running)."""
        sock = self._sock
        if sock is None or not fields:
            return False
        lines = []
        for key, value in fields.items():
            text = str(value)
            if "\n" in text:
                raise EdgeRuntimeError(f"notify field {key} holds a line break: {text!r}")
            lines.append(f"{key}={text}")
        try:
            # Never wait on the manager: a full socket buffer (systemd busy, or a listener that
            # stopped reading) drops this message rather than stalling the service's main loop,
            # as sd_notify does.
            sock.sendto("\n".join(lines).encode("utf-8"), socket.MSG_DONTWAIT, self._target)
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: the models are loaded and warmed; serving."""
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: call from the loop that does the work, after real progress."""
        return self.send(WATCHDOG=1)

    def status(self, text: str) -> bool:
        """``STATUS=...``: one line a person reads in ``systemctl status``."""
        return self.send(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutting down."""
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        """Release the socket. Safe to call twice."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
