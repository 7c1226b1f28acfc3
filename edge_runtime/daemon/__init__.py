"""The on-device daemon (``edge-runtime serve``), built in parts: its configuration
(``config.py``), the service (``service.py``), systemd's notify protocol (``notify.py``), the
JSON lines sink (``sinks.py``) and ``/metrics`` + ``/healthz`` (``metrics.py``)."""

from __future__ import annotations

from .config import Config, ConfigError, Metrics, Mqtt, Pipeline, Sink, load_config
from .notify import Notifier
from .sinks import JsonlSink

__all__ = ["Config", "ConfigError", "JsonlSink", "Metrics", "Mqtt", "Notifier", "Pipeline", "Sink", "load_config"]
