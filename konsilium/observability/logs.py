"""Logging set-up: JSON lines (default) or text, at the configured level.

A JSON line carries `time`, `level`, `logger`, `message`, the exception if any, and the
`fields` a caller passed (`log.info("request", extra={"fields": {...}})`): the access log writes
one such line per request with its request id, trace id, role, model, status, durations and
tokens. Prompts, completions, keys and tokens are never logged.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Literal

import msgspec

ACCESS_LOGGER = "konsilium.access"
_encoder = msgspec.json.Encoder(enc_hook=str)  # what JSON cannot hold is written as its str()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, "", ()))
        return text


def configure_logging(level: str, log_format: Literal["json", "text"]) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # one format for every line
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
