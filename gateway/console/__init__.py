"""The reviewer console and the operator dashboard: server-rendered pages in the control app.

Sessions and CSRF: `gateway.console.session`; guards, templates and the live queue hub:
`gateway.console.web`; the pages: `signin`, `sso` (OpenID Connect), `review` (reviewers), `dashboard` (operators).
Model traffic never passes through here.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from gateway.console.dashboard import Dashboard
from gateway.console.review import ReviewPages
from gateway.console.signin import SignIn
from gateway.console.sso import OidcSignIn


def console_routes(signin: SignIn, review: ReviewPages, dashboard: Dashboard, sso: OidcSignIn | None = None) -> list[BaseRoute]:
    return [
        *signin.routes(),
        *(sso.routes() if sso is not None else ()),
        *review.routes(),
        *dashboard.routes(),
        Mount("/console/static", StaticFiles(packages=[("gateway.console", "static")]), name="console-static"),
    ]
