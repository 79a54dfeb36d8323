"""The demo model's switches (what it answers and how it misbehaves) and its counters.

One validator serves both the command line and `POST /_demo/config`, so a value
the CLI refuses is refused at runtime with the same message.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from typing import Any

# Distinct paths tracked one by one in `by_path`; beyond that they share OTHER_PATHS,
# so a client probing random URLs cannot grow the stats without bound.
MAX_TRACKED_PATHS = 64
OTHER_PATHS = "<other>"


@dataclass
class Switches:
    """Everything `POST /_demo/config` can change. Defaults are the CLI defaults."""

    name: str = "demo-v1"
    latency_ms: float = 0.0  # sleep before answering an inference request
    fail_rate: float = 0.0  # fraction of inference requests answered with fail_status
    fail_status: int = 500
    confidence: float = 0.92  # reported confidence (a request may force another one)
    approval_rate: float = 0.7  # /predict approval rate for groups not in `skew`
    skew: dict[str, float] = field(default_factory=dict)  # group -> approval rate
    stream_delay_ms: float = 20.0  # pause between streamed events
    hang: bool = False  # inference requests never get an answer (until hang is switched off)
    reset: bool = False  # inference requests get their TCP connection reset, no response
    strict_name: bool = False  # like vLLM: a chat request naming another model than `name` is a 404

    def copy(self) -> "Switches":
        return replace(self, skew=dict(self.skew))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def updated(self, changes: dict[str, Any]) -> "Switches":
        """A validated copy with `changes` applied; ValueError names the first bad key."""
        if not isinstance(changes, dict):
            raise ValueError("config must be a JSON object")
        unknown = sorted(set(changes) - _FIELD_NAMES)
        if unknown:
            raise ValueError(f"unknown switch {unknown[0]!r} (known: {', '.join(sorted(_FIELD_NAMES))})")
        new = self.copy()
        for key, value in changes.items():
            setattr(new, key, _VALIDATORS[key](key, value))
        return new


_FIELD_NAMES = {f.name for f in fields(Switches)}


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _non_negative(key: str, value: Any) -> float:
    value = _number(key, value)
    if value < 0:
        raise ValueError(f"{key} must be >= 0, got {value!r}")
    return value


def _rate(key: str, value: Any) -> float:
    value = _number(key, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key} must be between 0 and 1, got {value!r}")
    return value


def confidence_value(key: str, value: Any) -> float:
    """A confidence is a probability in (0, 1]: its logarithm must exist."""
    value = _number(key, value)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{key} must be in (0, 1], got {value!r}")
    return value


def _status(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError(f"{key} must be an HTTP error status 400..599, got {value!r}")
    return value


def _flag(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value or not value.isprintable() or len(value) > 200:
        raise ValueError(f"{key} must be a non-empty printable string, got {value!r}")
    return value


def _skew(key: str, value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be an object of group -> approval rate, got {value!r}")
    return {str(group): _rate(f"{key}[{group!r}]", rate) for group, rate in value.items()}


_VALIDATORS = {
    "name": _name,
    "latency_ms": _non_negative,
    "fail_rate": _rate,
    "fail_status": _status,
    "confidence": confidence_value,
    "approval_rate": _rate,
    "skew": _skew,
    "stream_delay_ms": _non_negative,
    "hang": _flag,
    "reset": _flag,
    "strict_name": _flag,
}


def check(key: str, value: Any, label: str | None = None) -> Any:
    """Validate one switch value; the ValueError message names it as `label` (default `key`)."""
    if key not in _VALIDATORS:
        raise ValueError(f"unknown switch {key!r}")
    return _VALIDATORS[key](label or key, value)


class FailSchedule:
    """Deterministic failure injection: with rate p/q, exactly p of every q requests fail.

    Request n (1-based) fails when floor(n*p/q) > floor((n-1)*p/q), so failures are
    spread evenly (rate 0.5 fails requests 2, 4, 6, ...; rate 0.25 fails 4, 8, ...)
    and the sequence restarts whenever the rate is set or the demo is reset.
    """

    def __init__(self, rate: float = 0.0) -> None:
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        frac = Fraction(rate).limit_denominator(10_000)
        self._p, self._q = frac.numerator, frac.denominator
        self._n = 0

    def next_fails(self) -> bool:
        if self._p == 0:
            return False
        self._n += 1
        n, p, q = self._n, self._p, self._q
        return (n * p) // q > ((n - 1) * p) // q


class Stats:
    """Counters behind `GET /_demo/stats`.

    `requests` and `by_path` count everything a client sent except the control
    endpoints (`/_demo/*`) and `GET /health`, which has its own counter so that a
    health-probing gateway does not spoil a "zero requests reached the model" check.
    """

    def __init__(self) -> None:
        self.in_flight = 0  # live requests; survives a reset (they are still running)
        self.zero()

    def zero(self) -> None:
        self.requests = 0
        self.health_checks = 0
        self.by_path: dict[str, int] = {}
        self.cancelled = 0
        self.injected_failures = 0
        self.resets = 0

    def count(self, path: str) -> None:
        self.requests += 1
        by_path = self.by_path
        if path in by_path:
            by_path[path] += 1
        elif len(by_path) < MAX_TRACKED_PATHS:
            by_path[path] = 1
        else:
            by_path[OTHER_PATHS] = by_path.get(OTHER_PATHS, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "cancelled": self.cancelled,
            "injected_failures": self.injected_failures,
            "resets": self.resets,
            "health_checks": self.health_checks,
        }


class HangGate:
    """Where `hang` requests wait: opened (releasing every waiter) when hang is switched off."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def close(self) -> None:
        if self._event is None or self._event.is_set():
            self._event = asyncio.Event()

    def open(self) -> None:
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self._event is None:
            self.close()
        assert self._event is not None
        await self._event.wait()
