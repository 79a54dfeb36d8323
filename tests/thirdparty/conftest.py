"""The gateway's HTTP/1.1 client against servers nobody here wrote (nginx, aiohttp) and against framing few write.

Each module starts its server once, as a separate process on a free loopback port, and one
gateway process in front of it; tests move the gateway's global level and send the same
request straight to the server and through the gateway.
"""

from __future__ import annotations

import itertools
import uuid

import pytest

_RUN = uuid.uuid4().hex[:8]
_COUNT = itertools.count(1)


@pytest.fixture
def unique():
    """A fresh token for each request: byte-identical requests from one caller join a pending ticket
    (README, "Retries join their ticket"), so every request here differs from every other in its body or query."""
    return lambda: f"{_RUN}-{next(_COUNT)}"
