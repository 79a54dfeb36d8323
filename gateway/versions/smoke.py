"""Smoke tests: a version's own upstream answers a known dataset well enough before it serves.

A dataset is JSON Lines; each line is a request and what a passing answer must hold:

    {"request": {"method": "POST", "path": "/predict", "json": {...}}, "expect": {"status": 200, "contains": ["approve"]}}

`body` (text) may replace `json`; `headers` add request headers. `status` defaults to any
2xx; `contains` is a string or a list of strings that must all appear in the answer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway.catalog import VersionRoute, upstream_ssl_context


@dataclass(frozen=True)
class SmokeResult:
    passed: int
    total: int
    failures: list[str]

    @property
    def rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


def load_dataset(path: Path) -> list[dict[str, Any]]:
    cases = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(case, dict) or not isinstance(case.get("request"), dict):
            raise ValueError(f"{path}:{number}: expected an object with a `request`")
        cases.append(case)
    if not cases:
        raise ValueError(f"{path}: the dataset is empty")
    return cases


async def run_smoke(route: VersionRoute, tls, cases: list[dict[str, Any]], *, timeout: float = 10.0) -> SmokeResult:
    verify = upstream_ssl_context(tls) or True
    limit = asyncio.Semaphore(8)
    failures: list[str] = []

    async def one(client: httpx.AsyncClient, number: int, case: dict[str, Any]) -> bool:
        request, expect = case["request"], case.get("expect") or {}
        async with limit:
            try:
                response = await client.request(
                    request.get("method", "POST"), request.get("path", "/"),
                    json=request.get("json") if "json" in request else None,
                    content=request.get("body").encode() if isinstance(request.get("body"), str) else None,
                    headers={**{k.decode(): v.decode() for k, v in route.extra_headers}, **request.get("headers", {})},
                )
            except httpx.HTTPError as exc:
                failures.append(f"case {number}: {exc.__class__.__name__}: {exc}")
                return False
        wanted = expect.get("status")
        if (wanted is not None and response.status_code != wanted) or (wanted is None and not 200 <= response.status_code < 300):
            failures.append(f"case {number}: status {response.status_code}")
            return False
        contains = expect.get("contains", [])
        for needle in [contains] if isinstance(contains, str) else contains:
            if needle not in response.text:
                failures.append(f"case {number}: answer lacks {needle!r}")
                return False
        return True

    async with httpx.AsyncClient(base_url=route.upstream, timeout=timeout, verify=verify) as client:
        results = await asyncio.gather(*(one(client, n, case) for n, case in enumerate(cases, 1)))
    return SmokeResult(sum(results), len(results), failures[:20])
