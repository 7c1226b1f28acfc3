"""The on-device daemon (``edge-runtime serve``): its configuration so far (``config.py``)."""

from __future__ import annotations

from .config import Config, ConfigError, Metrics, Mqtt, Pipeline, Sink, load_config

__all__ = ["Config", "ConfigError", "Metrics", "Mqtt", "Pipeline", "Sink", "load_config"]
