"""The ASGI application: model traffic to the pure-ASGI data plane, the rest to the control app.

Model traffic (`/models/...` and the OpenAI-style `/v1/...` routes) never enters a
framework or middleware stack; the control plane (admin, review, evidence, health,
console) is an ordinary Starlette app, where a little per-request cost buys clarity.
The lifespan starts and stops the wired gateway (`gateway.wiring`).
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.wiring import Gateway

log = logging.getLogger("gateway")

# `/v1/...` paths the gateway answers itself instead of routing to a model.
_CONTROL_V1 = ("/v1/models", "/v1/decisions", "/v1/feedback", "/v1/reports")


class GatewayApp:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.dataplane = gateway.dataplane
        self.control = gateway.control

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            if path.startswith("/models/") or (path.startswith("/v1/") and not path.startswith(_CONTROL_V1)):
                await self.dataplane(scope, receive, send)
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.control(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:  # the store is unreachable, the data folder unwritable, ...
                    log.error("gateway failed to start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.gateway.stop()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return
