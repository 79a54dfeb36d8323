"""Post-hoc sampling that no client can steer, and an auditor can recompute.

Each request the policy may sample gets a fresh random draw from the gateway's CSPRNG:
nothing the client chooses (its request id, its body) or can learn from its answers
enters it. The draw is hashed with the deployment's sampling key (kept in the control
state and included in evidence exports) and the request is sampled when the result is
below the rate. The draw is written into the decision record, so an auditor with the key
recomputes exactly which recorded requests were sampled, and that the gateway did not
pick its draws.
"""

from __future__ import annotations

import hashlib

from gateway.ids import random_bytes

_SCALE = float(1 << 64)
DRAW_BYTES = 8


def draw() -> bytes:
    """A fresh random draw for one request."""
    return random_bytes(DRAW_BYTES)


class Sampler:
    """Keyed once; each request costs one copy of the keyed hash state."""

    __slots__ = ("_keyed",)

    def __init__(self, key: bytes) -> None:
        self._keyed = hashlib.blake2b(digest_size=8, key=key)

    def point(self, drawn: bytes) -> float:
        """The draw's position in [0, 1): sampled when below the rate."""
        h = self._keyed.copy()
        h.update(drawn)
        return int.from_bytes(h.digest(), "big") / _SCALE

    def sampled(self, drawn: bytes, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.point(drawn) < rate


def sample_point(drawn: bytes, key: bytes) -> float:
    return Sampler(key).point(drawn)


def is_sampled(drawn: bytes, rate: float, key: bytes) -> bool:
    """Whether a request was sampled, recomputed from its recorded draw and the deployment's key (auditors)."""
    return Sampler(key).sampled(drawn, rate)
