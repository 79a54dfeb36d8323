"""Every expected failure, mapped once to the answer a client gets.

Both planes ask this table: the data plane (`gateway.proxy.dataplane`) for model traffic
and the control plane's exception handlers (`gateway.api.common`), so the same outage
reads the same everywhere. Anything the table does not know is a defect: a 500 whose
details are in the log, under the request id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import GatewayError
from gateway.evidence import EvidenceLogError
from gateway.store import StoreUnavailable


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    type: str
    message: str
    detail: dict[str, Any] | None = None
    param: str | None = None
    code: str | None = None


INTERNAL = Failure(500, "internal", "the gateway failed on this request; its log has the details under this request id")

_STORE_DOWN = ("the oversight store cannot be reached, so nothing that needs it can happen now "
               "(no level change, no ticket for a human); nothing was changed, retry later")
_EVIDENCE_DOWN = "this decision cannot be recorded as evidence, so it is not served; retry later"


EXPECTED: tuple[type[Exception], ...] = (GatewayError, StoreUnavailable, EvidenceLogError)
"""The exceptions `failure_of` maps (everything else is a defect)."""


def failure_of(exc: BaseException) -> Failure | None:
    """The answer for an expected failure, or None when `exc` is a defect."""
    if isinstance(exc, GatewayError):
        return Failure(exc.status, exc.type, exc.message, exc.detail, exc.param, exc.code)
    if isinstance(exc, StoreUnavailable):
        return Failure(503, "store_unavailable", _STORE_DOWN)
    if isinstance(exc, EvidenceLogError):
        return Failure(503, "evidence_unavailable", _EVIDENCE_DOWN)
    return None
