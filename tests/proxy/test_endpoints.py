"""A version served by two demo-model processes: both share the traffic, one stopping loses nothing unreached."""

from __future__ import annotations

import asyncio
import re

from tests.support import auth, eventually, serve_in_process, start_demo, write_config

APPLICANT = {"applicant": {"id": "e-1", "group": "A"}}


async def test_two_endpoints_share_a_version_and_one_stopping_is_ejected(tmp_path):
    first, second = start_demo(), start_demo()
    config = write_config(tmp_path, {"demo": {"v1": {"upstreams": [first.url, second.url], "probe_interval": "0.2s"}}})
    try:
        async with serve_in_process(config) as gw:
            answers = await asyncio.gather(*(gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
                                             for _ in range(40)))
            assert [r.status_code for r in answers] == [200] * 40
            served = [first.stats()["by_path"].get("/predict", 0), second.stats()["by_path"].get("/predict", 0)]
            assert sum(served) == 40 and min(served) >= 10, served  # both in rotation

            second.stop()
            answers = [await gw.client.post("/models/demo/predict", json=APPLICANT, headers=auth("client"))
                       for _ in range(20)]
            assert [r.status_code for r in answers] == [200] * 20  # none of them had reached the stopped one

            listed = (await gw.client.get("/admin/models", headers=auth("operator"))).json()["models"]
            endpoints = {e["url"].rstrip("/"): e for e in listed["demo"]["versions"]["v1"]["endpoints"]}
            assert endpoints[second.url]["up"] is False and endpoints[second.url]["ejections"] == 1
            assert endpoints[first.url]["up"] is True

            async def scraped():
                text = (await gw.client.get("/metrics", headers=auth("operator"))).text
                return re.findall(r'gateway_upstream_endpoint_up\{endpoint="([^"]+)",model="demo",version="v1"\} (\S+)',
                                  text)

            ups = dict(await eventually(scraped))
            assert {url.rstrip("/"): value for url, value in ups.items()} == {first.url: "1.0", second.url: "0.0"}
    finally:
        first.stop()
        second.stop()
