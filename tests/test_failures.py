"""One table maps every expected failure to the answer a client gets, on both planes."""

from __future__ import annotations

from gateway.errors import Conflict, GatewayError, NotFound
from gateway.evidence import EvidenceLogError, LogInUse
from gateway.failures import EXPECTED, INTERNAL, failure_of
from gateway.store import StoreUnavailable


def test_a_gateway_error_keeps_its_status_type_message_and_detail():
    failure = failure_of(Conflict("taken", detail={"active": "v2"}))
    assert (failure.status, failure.type, failure.message, failure.detail) == (409, "conflict", "taken", {"active": "v2"})
    custom = failure_of(GatewayError("not served", status=503, type="model_integrity"))
    assert (custom.status, custom.type) == (503, "model_integrity")


def test_outages_are_503_with_one_message_whatever_the_backend_said():
    store = failure_of(StoreUnavailable("Redis at redis://10.0.0.1:6379: Connection refused"))
    assert (store.status, store.type) == (503, "store_unavailable")
    assert "10.0.0.1" not in store.message and "retry later" in store.message
    evidence = failure_of(LogInUse("evidence log /data/replica-0 is open in another process"))
    assert (evidence.status, evidence.type) == (503, "evidence_unavailable")


def test_anything_else_is_a_defect_and_every_mapped_kind_is_listed():
    assert failure_of(RuntimeError("a bug")) is None and INTERNAL.status == 500
    for kind in (NotFound, StoreUnavailable, EvidenceLogError):
        assert issubclass(kind, EXPECTED)
