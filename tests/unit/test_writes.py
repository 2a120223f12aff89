"""Which refusals of a write bound to a uid mean that the object is not the one the pass found
(writes.refused_for_its_uid): the API server's wording, from k8s.io/apiserver v0.35.8."""

from __future__ import annotations

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status, StatusCause, StatusDetails
from tenantry.writes import NotTheOneFound, bound_to_the_one_found, refused_for_its_uid

KEY = ("Namespace", "", "tenant-acme")
BOUND = {"metadata": {"name": "tenant-acme", "uid": "uid-1"}}


def refusal(code: int, message: str, *fields: str) -> ApiError:
    causes = [StatusCause(field=field, reason="FieldValueInvalid") for field in fields]
    details = StatusDetails(causes=causes) if causes else None
    return ApiError(status=Status(code=code, message=message, details=details))


GONE = refusal(
    409,
    'Operation cannot be fulfilled on namespaces "tenant-acme": uid mismatch: the provided '
    "object specified uid uid-1, and no existing object was found",
)
ANOTHER = refusal(
    422, 'Namespace "tenant-acme" is invalid: metadata.uid: field is immutable', "metadata.uid"
)


@pytest.mark.parametrize("error", [GONE, ANOTHER])
def test_a_refusal_for_the_uid_alone_means_another_object(error: ApiError) -> None:
    assert refused_for_its_uid(error)
    with pytest.raises(NotTheOneFound) as raised, bound_to_the_one_found(KEY, BOUND):
        raise error
    assert raised.value.key == KEY


@pytest.mark.parametrize(
    "error",
    [
        refusal(409, "the object has been modified; please apply your changes to the latest"),
        refusal(409, "admission webhook denied the request"),
        refusal(409, "Precondition failed: UID in precondition: uid-1, UID in object meta: "),
        refusal(422, "metadata.labels: Invalid value", "metadata.labels"),
        refusal(422, "two fields", "metadata.uid", "metadata.labels"),
        refusal(422, "no causes"),
        refusal(404, "not found"),
    ],
)
def test_any_other_refusal_is_left_as_it_was(error: ApiError) -> None:
    assert not refused_for_its_uid(error)
    with pytest.raises(ApiError), bound_to_the_one_found(KEY, BOUND):
        raise error


def test_a_write_without_a_uid_is_never_taken_for_one() -> None:
    with pytest.raises(ApiError), bound_to_the_one_found(KEY, {"metadata": {"name": "x"}}):
        raise GONE
