"""The `Prefer` request header (RFC 7240): `respond-async` and `wait=N`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Preferences:
    respond_async: bool = False
    wait: float | None = None


def parse_prefer(headers: list[tuple[bytes, bytes]]) -> Preferences:
    respond_async = False
    wait: float | None = None
    for name, value in headers:
        if name != b"prefer":
            continue
        for item in value.split(b","):
            token = item.split(b";", 1)[0].strip()
            key, _, raw = token.partition(b"=")
            key = key.strip().lower()
            if key == b"respond-async":
                respond_async = True
            elif key == b"wait":
                try:
                    wait = max(0.0, float(raw.strip().strip(b'"')))
                except ValueError:
                    pass  # an unusable preference is ignored, as RFC 7240 section 2 says
    return Preferences(respond_async, wait)
