"""The AgentTenants of examples/, loaded from their files: tests and benchmarks derive their
tenants from these rather than writing them again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str) -> dict[str, Any]:
    """examples/<name>.yaml as a fresh dict (the caller may change it)."""
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    return document
