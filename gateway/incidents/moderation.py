"""The output check: a model's answers sent to a moderation classifier, off the request path by default.

The classifier is any server in the OpenAI moderations shape — `POST {url}/v1/moderations`
with `{"model", "input": [text]}`, answered `{"results": [{"flagged": bool, ...}]}` — which
OpenAI, Llama Guard servers and other moderation servers expose. The policy names it per
model (`models.NAME.output_check`) and says how many answers to check (`sample_rate`).

Two ways to run it:

- **Off the request path** (the default): a served answer is checked after its client has
  it, in a background task; the result only counts (memory, flushed with the other counters),
  so a check adds neither latency nor a store round trip. Only served answers are checked:
  held ones are read by a human anyway.
- **Blocking** (`blocking: true`), at level 2 and above, where the gateway reads the whole
  answer before releasing it: an answer that would be released is checked first; a flagged
  one is held for a human, and so is one the classifier could not judge (unreachable, timed
  out, an answer not of the moderations shape) — fail closed. Below level 2 answers are not
  held for anything, so a blocking check runs off the path there too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx

from gateway.incidents.counters import TrafficCounters
from gateway.policy import EffectiveModelPolicy, OutputCheck

if TYPE_CHECKING:
    from gateway.proxy.exchange import Exchange

log = logging.getLogger("gateway.moderation")

MAX_PENDING = 256  # checks waiting at once; beyond that a served answer is not checked (and counted unchecked)
MAX_INPUT_CHARS = 32_000
_draw = random.SystemRandom().random  # not steerable by a client that learns earlier draws


def answer_text(body: bytes) -> str:
    """What the model said: a chat or text completion's content (whole or streamed), else the body as text."""
    text = body.decode("utf-8", "replace")
    if text.lstrip().startswith("data:"):  # an OpenAI stream
        parts = []
        for line in text.splitlines():
            if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
                try:
                    event = json.loads(line[5:])
                except ValueError:
                    continue
                for choice in event.get("choices") or ():
                    parts.append((choice.get("delta") or {}).get("content") or choice.get("text") or "")
        return "".join(parts)[:MAX_INPUT_CHARS]
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:MAX_INPUT_CHARS]
    if isinstance(doc, dict) and isinstance(doc.get("choices"), list):
        parts = []
        for choice in doc["choices"]:
            if isinstance(choice, dict):
                message = choice.get("message") or {}
                parts.append(message.get("content") if isinstance(message.get("content"), str) else choice.get("text") or "")
        return "".join(p for p in parts if isinstance(p, str))[:MAX_INPUT_CHARS]
    return text[:MAX_INPUT_CHARS]


class OutputChecks:
    """One classifier client for every model that has an output check; an observer of finished exchanges."""

    def __init__(self, policies: Mapping[str, EffectiveModelPolicy], counters: TrafficCounters) -> None:
        self.checks: dict[str, OutputCheck] = {m: p.output_check for m, p in policies.items() if p.output_check}
        self.counters = counters
        self._client: httpx.AsyncClient | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def blocks(self, model: str) -> bool:
        check = self.checks.get(model)
        return check is not None and check.blocking

    async def classify(self, model: str, text: str) -> tuple[bool | None, str]:
        """(flagged, why): True/False from the classifier, None when it could not say (and why not)."""
        check = self.checks[model]
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False)
        payload: dict = {"input": [text]}
        if check.model:
            payload["model"] = check.model
        key = os.environ.get(check.api_key_env) if check.api_key_env else None
        headers = {"authorization": f"Bearer {key}"} if key else None
        try:
            r = await self._client.post(check.url.rstrip("/") + "/v1/moderations", json=payload, headers=headers,
                                        timeout=check.timeout)
        except httpx.HTTPError as exc:
            return None, f"the output check at {check.url} could not be reached: {exc.__class__.__name__}"
        try:
            results = r.json()["results"] if r.status_code == 200 else None
            flags = [bool(item["flagged"]) for item in results] if isinstance(results, list) and results else None
        except (ValueError, KeyError, TypeError):
            flags = None
        if flags is None:
            return None, f"the output check at {check.url} answered {r.status_code} without moderation results"
        if any(flags):
            categories = sorted({name for item in results if isinstance(item.get("categories"), dict)
                                 for name, on in item["categories"].items() if on})
            return True, f"the output check flagged the answer ({', '.join(categories) or 'flagged'})"
        return False, "the output check passed the answer"

    # blocking (level >= 2, on the request path) -------------------------------------------
    async def before_release(self, ex: "Exchange") -> tuple[bool | None, str]:
        """Check an answer about to be released; counted. Not sampled: a blocking check sees every answer."""
        flagged, why = await self.classify(ex.model, answer_text(ex.response_body or b""))
        self.counters.checked(ex.model, ex.version, flagged=flagged)
        return flagged, why

    # off the request path --------------------------------------------------------------------
    def observe(self, ex: "Exchange") -> None:
        check = self.checks.get(ex.model)
        if check is None or not ex.version or ex.disconnected or ex.route not in ("auto", "sampled"):
            return
        if check.blocking and ex.level >= 2:
            return  # checked before release (or held for another reason, and read by a human)
        if ex.response_body is None or ex.response_status >= 400 or not ex.upstream_seconds:
            return
        if check.sample_rate < 1.0 and _draw() >= check.sample_rate:
            return
        if len(self._pending) >= MAX_PENDING:
            self.counters.checked(ex.model, ex.version, flagged=None)
            return
        task = asyncio.get_running_loop().create_task(self._check(ex.model, ex.version, ex.response_body))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _check(self, model: str, version: str, body: bytes) -> None:
        flagged, why = await self.classify(model, answer_text(body))
        if flagged is None:
            log.warning("%s: %s", model, why)
        self.counters.checked(model, version, flagged=flagged)

    async def drain(self) -> None:
        """Wait for the checks in flight (tests, and a clean shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._pending):
            task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
