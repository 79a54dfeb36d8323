"""The control plane's HTTP API: thin handlers over the domain modules, one class per area.

Each class receives exactly the collaborators it uses and lists its own routes;
`control_app` puts them in one Starlette app with the one error mapping.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute

from gateway.api.common import on_error
from gateway.failures import EXPECTED


def control_app(routes: Sequence[BaseRoute]) -> Starlette:
    """Admin, review, evidence, health and console routes, with every error answered in the JSON shape."""
    handlers = {kind: on_error for kind in (HTTPException, *EXPECTED, Exception)}
    return Starlette(routes=list(routes), exception_handlers=handlers)
