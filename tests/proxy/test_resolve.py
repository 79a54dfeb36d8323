"""Resolving the model and version: names the catalog knows, the active version, the effective level."""

from __future__ import annotations

import httpx
import pytest

from gateway.catalog import Catalog
from gateway.config import load_config
from gateway.control import keys
from gateway.control.state import ControlState
from gateway.errors import BadRequest, GatewayError, NotFound
from gateway.proxy.resolve import Resolver, V1Request, read_v1
from gateway.store.embedded import EmbeddedStore
from tests.support import write_config


@pytest.fixture
async def resolver(tmp_path):
    config = load_config(write_config(tmp_path, {"credit": {"v1": "http://127.0.0.1:9", "v2": "http://127.0.0.1:9"}}))
    catalog = Catalog(config)
    state = ControlState(EmbeddedStore(tmp_path / "state.db"), initial_level=0, max_staleness=2, on_state_loss=4)
    await state.start()
    yield Resolver(catalog, state), state
    await state.stop()
    catalog.close()


async def test_an_unknown_model_is_404_naming_the_known_ones(resolver):
    resolver, _ = resolver
    assert resolver.known("credit") == "credit"
    with pytest.raises(NotFound, match="known models: credit"):
        resolver.known("nope")


async def test_the_active_version_and_the_effective_level(resolver):
    resolver, state = resolver
    await state.change(keys.active("credit"), {"version": "v2"}, audit={})
    await state.change(keys.level("credit"), {"level": 3}, audit={})
    route, level = resolver.active_route("credit")
    assert (route.model, route.name, level) == ("credit", "v2", 3)


async def test_no_reachable_active_version_is_503(resolver):
    resolver, state = resolver
    with pytest.raises(GatewayError) as none_active:
        resolver.active_route("credit")
    await state.change(keys.active("credit"), {"version": "v9"}, audit={})  # a version this replica cannot reach
    with pytest.raises(GatewayError) as unknown_active:
        resolver.active_route("credit")
    for raised in (none_active, unknown_active):
        assert (raised.value.status, raised.value.type) == (503, "unavailable")


@pytest.mark.parametrize(("body", "says"), [
    (b"", "needs a JSON body"),
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "no `model` string"),
    (b'{"model": 7}', "no `model` string"),
    (b'{"model": ""}', "no `model` string"),
    (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
])
def test_a_v1_body_without_a_usable_model_is_400(body, says):
    with pytest.raises(BadRequest, match=says):
        read_v1(body)


def test_a_v1_body_names_its_model_and_whether_it_streams():
    assert read_v1(b'{"model": "credit", "messages": []}') == V1Request("credit", False, {"model": "credit", "messages": []})
    assert read_v1(b'{"model": "credit", "stream": true}').stream is True
    assert read_v1(b'{"model": "credit", "stream": "yes"}').stream is False


def _form(fields: dict, files: dict | None = None) -> tuple[bytes, bytes]:
    request = httpx.Request("POST", "http://gw/v1/audio/transcriptions", data=fields, files=files)
    return request.read(), request.headers["content-type"].encode()


def test_a_multipart_v1_body_is_routed_by_its_model_field_wherever_it_is():
    audio = {"file": ("a.wav", b"RIFF" + b"\r\n--" * 50 + b"\x00" * 5000, "audio/wav")}
    body, content_type = _form({"model": "whisper/large-v3", "stream": "true"}, audio)
    v1 = read_v1(body, content_type)
    assert (v1.model, v1.stream) == ("whisper/large-v3", True)
    assert body[v1.model_at[0]:v1.model_at[1]] == b"whisper/large-v3"  # where a served name would go


@pytest.mark.parametrize("fields, content_type, says", [
    ({"language": "en"}, None, "no `model` field"),
    ({"model": ""}, None, "no `model` field"),
    ({"model": "m"}, b"multipart/form-data", "without a boundary"),
])
def test_a_multipart_body_without_a_usable_model_is_400(fields, content_type, says):
    body, real_type = _form(fields, {"file": ("a.wav", b"x")})
    with pytest.raises(BadRequest, match=says):
        read_v1(body, content_type or real_type)
