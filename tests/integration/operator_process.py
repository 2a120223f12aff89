"""The operator as a child process of the tests: the shared one, which fault tests may kill and
start again, and the ones a test starts with flags of its own (`Operator`)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from tenants import (
    DRIFT_INTERVAL_SECONDS,
    OPERATOR_LABEL,
    SECRET_SOURCE_NAMESPACE,
    TEMPLATE_KINDS,
)

from tests.support import processes


class OperatorProcess:
    """`tenantry run` as a child process, which fault tests may kill and start again."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        self.log = log
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "TENANTRY_SECRET_SOURCE_NAMESPACE": SECRET_SOURCE_NAMESPACE,
            "TENANTRY_TEMPLATE_KINDS": TEMPLATE_KINDS,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        with self.log.open("a") as log:
            log.write(f"---- start {self.starts} ----\n")
            log.flush()
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "tenantry"),
                    "run",
                    "--drift-interval",
                    str(DRIFT_INTERVAL_SECONDS),
                    # Tenants with this label belong to operators that tests start themselves.
                    "--tenant-selector",
                    f"!{OPERATOR_LABEL}",
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process, timeout=15)


TENANTRY = str(Path(sys.executable).parent / "tenantry")
LOGS = Path(__file__).resolve().parents[2] / ".cache" / "test-logs"


@dataclass
class Operator:
    """One `tenantry run` process, its log and its metrics endpoint."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    def log_text(self) -> str:
        return self.log.read_text()

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when absent, as for a labelled series never touched."""
        return self.scrape().get((name, frozenset(labels.items())), 0.0)

    def reconciling(self) -> bool:
        """Whether it has its caches and reconciles (False while its metrics are not served yet)."""
        try:
            return self.metric("tenantry_caches_synced") == 1
        except OSError:
            return False

    def total(self, name: str) -> float:
        """The sum of a metric over all its label values."""
        return sum(value for (sample, _), value in self.scrape().items() if sample == name)


StartOperator = Callable[..., Operator]
