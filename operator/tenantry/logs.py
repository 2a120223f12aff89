"""JSON log lines, each naming the tenant it is about."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the tenant when known."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        tenant = getattr(record, "tenant", None)
        # Kopf's per-object loggers carry a reference to the object they are about.
        ref = getattr(record, "k8s_ref", None)
        if tenant is None and isinstance(ref, dict) and ref.get("kind") == "AgentTenant":
            tenant = ref.get("name")
        if tenant is not None:
            entry["tenant"] = tenant
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Kopf's and the HTTP client's own chatter stays out of the way at INFO.
    for noisy in ("kopf.objects", "httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
