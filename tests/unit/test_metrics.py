"""What the metrics count, read back from the real Prometheus registry."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from tenantry import metrics
from tenantry.status import Correction, GroupState, Observation


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


GOOD = {"RuntimeReady": GroupState(True, "Available")}
ROLLING = {"RuntimeReady": GroupState(False, "RollingOut", "the runtime Deployment is rolling out")}


def test_a_pass_is_timed_by_outcome_and_its_corrections_are_counted_by_kind() -> None:
    before = {
        outcome: sample("tenantry_reconcile_duration_seconds_count", outcome=outcome)
        for outcome in ("ready", "progressing", "stalled", "error")
    }
    drift_before = sample("tenantry_drift_corrections_total", kind="NetworkPolicy")
    corrected = (
        Correction("NetworkPolicy", "tenant-a/default-deny", "missing"),
        Correction("NetworkPolicy", "tenant-a/runtime", "changed by intruder"),
    )
    metrics.observe_reconcile(
        Observation(1, "tenant-a", "a", groups=GOOD, corrected=corrected), 0.2
    )
    metrics.observe_reconcile(Observation(1, "tenant-b", "b", groups=ROLLING), 0.1)
    metrics.observe_reconcile(Observation(1, None, "c", stalled=("SecretNotFound", "…")), 0.01)
    metrics.observe_reconcile(None, 5.0)
    for outcome in ("ready", "progressing", "stalled", "error"):
        after = sample("tenantry_reconcile_duration_seconds_count", outcome=outcome)
        assert after == before[outcome] + 1, outcome
    assert sample("tenantry_drift_corrections_total", kind="NetworkPolicy") == drift_before + 2


def test_tenants_are_counted_by_the_condition_that_is_true() -> None:
    metrics.count_tenants(["ready", "ready", "progressing", "stalled", "ready"])
    assert sample("tenantry_tenants", condition="Ready") == 3
    assert sample("tenantry_tenants", condition="Reconciling") == 1
    assert sample("tenantry_tenants", condition="Stalled") == 1
    metrics.count_tenants([])
    assert sample("tenantry_tenants", condition="Ready") == 0


def test_api_errors_are_counted_by_status_code_or_by_the_error_without_an_answer() -> None:
    from lightkube.core.exceptions import ApiError  # noqa: PLC0415
    from lightkube.models.meta_v1 import Status  # noqa: PLC0415

    before = sample("tenantry_api_errors_total", source="lease", code="409")
    metrics.api_error("lease", ApiError(status=Status(code=409, message="conflict")))
    assert sample("tenantry_api_errors_total", source="lease", code="409") == before + 1
    metrics.api_error("reconcile", ConnectionRefusedError("no API server"))
    assert (
        sample("tenantry_api_errors_total", source="reconcile", code="ConnectionRefusedError") >= 1
    )


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0.0.0.0:9090", ("0.0.0.0", 9090)),  # noqa: S104 - parsed, never bound
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9090", ("::1", 9090)),
        (":9090", ("0.0.0.0", 9090)),  # noqa: S104 - parsed, never bound
    ],
)
def test_metrics_addresses(address: str, expected: tuple[str, int]) -> None:
    assert metrics.parse_address(address) == expected


@pytest.mark.parametrize("address", ["9090", "localhost", "host:http", "host:70000", "host:0"])
def test_bad_metrics_addresses_say_what_to_write(address: str) -> None:
    with pytest.raises(ValueError, match=r"is not HOST:PORT: use e\.g\. 0\.0\.0\.0:9090"):
        metrics.parse_address(address)
