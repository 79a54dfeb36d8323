"""The reviewer console and the operator dashboard: server-rendered pages in the control app.

Sessions, CSRF and role checks: `gateway.console.session` and `gateway.console.web`.
The pages live in the Starlette control app; model traffic never passes through here.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles


def routes() -> list[BaseRoute]:
    from gateway.console import dashboard, review, signin

    return [
        Route("/console/login", signin.login_form, methods=["GET"]),
        Route("/console/login", signin.login, methods=["POST"]),
        Route("/console/logout", signin.logout, methods=["POST"]),
        # reviewer console
        Route("/console/review", review.queue_page, methods=["GET"]),
        Route("/console/review/rows", review.queue_rows, methods=["GET"]),
        Route("/console/review/events", review.events, methods=["GET"]),
        Route("/console/review/{id}", review.ticket_page, methods=["GET"]),
        Route("/console/review/{id}/claim", review.claim, methods=["POST"]),
        Route("/console/review/{id}/release", review.release, methods=["POST"]),
        Route("/console/review/{id}/decide", review.decide, methods=["POST"]),
        # operator dashboard
        Route("/console", dashboard.dashboard_page, methods=["GET"]),
        Route("/console/levels", dashboard.set_level, methods=["POST"]),
        Route("/console/kill", dashboard.kill, methods=["POST"]),
        Route("/console/changes/{id}/approve", dashboard.approve_change, methods=["POST"]),
        Route("/console/models/{model}/activate", dashboard.activate, methods=["POST"]),
        Route("/console/models/{model}/rollback", dashboard.rollback, methods=["POST"]),
        Route("/console/incidents/{id}/ack", dashboard.acknowledge, methods=["POST"]),
        Route("/console/incidents/{id}/notes", dashboard.add_note, methods=["POST"]),
        Route("/console/incidents/{id}/resolve", dashboard.resolve, methods=["POST"]),
        Mount("/console/static", StaticFiles(packages=[("gateway.console", "static")]), name="console-static"),
    ]
