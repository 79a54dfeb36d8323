import pytest

from gateway.evidence.crypto import generate_signing_key


@pytest.fixture
def key():
    return generate_signing_key()
