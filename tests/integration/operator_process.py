"""The operator as a child process of the tests, which fault tests may kill and start again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
