"""The upstream hop: a small keep-alive HTTP/1.1 client on asyncio protocols and httptools.

Why not httpx's pool here: on the 2-core reference machine, `httpx.AsyncClient` costs
about 2-4 ms of CPU per proxied request (httpcore's pool and anyio), and aiohttp about
0.8 ms; the gateway's whole budget is under 0.7 ms. This client does one thing — send a
request to one origin and hand back the status, headers and body chunks as they arrive —
in about 60 us; `Endpoints` balances a version's replicas over one pool each. httpx remains the client everywhere else (CLI, health checks, smoke tests).

Cancelling the coroutine that waits on a response aborts the connection, so the upstream
sees the client's disconnect at once.
"""

from gateway.upstream.connection import UpstreamError, UpstreamResponse
from gateway.upstream.endpoints import Endpoint, Endpoints
from gateway.upstream.pool import ConnectionBudget, UpstreamPool

__all__ = ["ConnectionBudget", "Endpoint", "Endpoints", "UpstreamError", "UpstreamPool", "UpstreamResponse"]
