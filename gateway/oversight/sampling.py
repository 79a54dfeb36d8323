"""Deterministic post-hoc sampling: whether a request is sampled follows from its id.

The id is hashed with the deployment's sampling key (kept in the control state and
included in evidence exports). An auditor with the key recomputes exactly which requests
were sampled; a client that picks its own request ids cannot steer around the sample.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def sample_point(request_id: bytes, key: bytes) -> float:
    """The request's position in [0, 1): it is sampled when below the rate."""
    digest = hashlib.blake2b(request_id, digest_size=8, key=key).digest()
    return int.from_bytes(digest, "big") / _SCALE


def is_sampled(request_id: bytes, rate: float, key: bytes) -> bool:
    if rate <= 0.0:
        return False
    if rate >= 1.0:
        return True
    return sample_point(request_id, key) < rate
