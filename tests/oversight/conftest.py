from __future__ import annotations

import pytest

from tests.support import gateway_factory


@pytest.fixture
def make_gateway(tmp_path, demo):
    """In-process gateways in front of the demo model (model `demo`, version v1)."""
    return gateway_factory(tmp_path, {"demo": {"v1": demo.url}})
