"""Real clients against a real gateway process in front of the demo model.

One gateway process per module, with one model per oversight situation (all served by
the session's demo model): `held` at level 3, `paused` at level 4, `doubtful` at level 2
(confidence from the answer, set per request with the demo's `x-demo-confidence`), and
`impatient` at level 3 with a one-second `hold_wait`, for the "no decision in time" cases.
A `Reviewer` decides tickets over the review API from a thread while a client call blocks,
as a person at the console would.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import TOKENS, GatewayProcess, auth, free_port, write_config

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # LiteLLM reads its bundled cost map, not the network

MODELS = {"held": 3, "paused": 4, "doubtful": 2, "impatient": 3}
WAIT = 20.0  # the hold_wait of every model but `impatient` (1 s)
NODE_CLIENT = Path(__file__).parent / "node" / "client.mjs"


@dataclass
class Gateway:
    url: str
    process: GatewayProcess

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def get(self, path: str, who: str = "operator", **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=auth(who), timeout=30, **kw)

    def post(self, path: str, body: Any, who: str = "operator") -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=auth(who), timeout=30)

    def put(self, path: str, body: Any, who: str = "operator") -> httpx.Response:
        return httpx.put(self.url + path, json=body, headers=auth(who), timeout=30)

    def pending(self, model: str) -> list[dict[str, Any]]:
        tickets = self.get(f"/review/tickets?model={model}&status=pending", "reviewer").json()["tickets"]
        return [t for t in tickets if t["kind"] != "sample"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, demo_model):
    directory = tmp_path_factory.mktemp("clients")
    policy = {"defaults": {"hold_wait": {"openai": f"{WAIT}s"}, "sample_rate": {0: 0.0}},
              "models": {"impatient": {"hold_wait": {"openai": "1s"}}}}
    config = write_config(directory, {name: {"v1": demo_model.url} for name in MODELS}, policy=policy)
    process = GatewayProcess(config, free_port()).start()
    gw = Gateway(process.url, process)
    for name, level in MODELS.items():
        r = gw.put(f"/admin/oversight/models/{name}", {"level": level, "reason": "client tests"})
        assert r.status_code == 200, r.text
    yield gw
    process.stop()


@dataclass
class Reviewer:
    """Decides the next held ticket of a model from a thread, the way a reviewer at the console would."""

    gateway: Gateway
    decided: list[dict[str, Any]] = field(default_factory=list)
    _threads: list[threading.Thread] = field(default_factory=list)

    def will(self, model: str, action: str, *, after: float = 0.3, count: int = 1, **decision: Any) -> None:
        known = {t["id"] for t in self.gateway.pending(model)}

        def work() -> None:
            deadline = time.monotonic() + 30
            while len([d for d in self.decided if d["model"] == model]) < count and time.monotonic() < deadline:
                fresh = [t for t in self.gateway.pending(model) if t["id"] not in known]
                if not fresh:
                    time.sleep(0.02)
                    continue
                time.sleep(after)  # the client is waiting by now
                for ticket in fresh:
                    r = self.gateway.post(f"/review/tickets/{ticket['id']}/decision", {"action": action, **decision},
                                          "reviewer")
                    assert r.status_code == 200, r.text
                    self.decided.append(r.json())
                    known.add(ticket["id"])

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(35)


@pytest.fixture
def reviewer(gateway):
    r = Reviewer(gateway)
    yield r
    r.join()


def client_token() -> str:
    return TOKENS["client"]


def message(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
