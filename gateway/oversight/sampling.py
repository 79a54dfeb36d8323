"""Deterministic post-hoc sampling: whether a request is sampled follows from its id.

The id is hashed with the deployment's sampling key (kept in the control state and
included in evidence exports). An auditor with the key recomputes exactly which requests
were sampled; a client that picks its own request ids cannot steer around the sample.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


class Sampler:
    """Keyed once; each request costs one copy of the keyed hash state."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hashlib.blake2b(digest_size=8, key=key)

    def point(self, request_id: bytes) -> float:
        """The request's position in [0, 1): it is sampled when below the rate."""
        h = self._keyed.copy()
        h.update(request_id)
        return int.from_bytes(h.digest(), "big") / _SCALE

    def sampled(self, request_id: bytes, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.point(request_id) < rate


def sample_point(request_id: bytes, key: bytes) -> float:
    return Sampler(key).point(request_id)


def is_sampled(request_id: bytes, rate: float, key: bytes) -> bool:
    """Whether a request is sampled, recomputed from its id and the deployment's key (auditors)."""
    return Sampler(key).sampled(request_id, rate)
