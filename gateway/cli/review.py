"""`gateway review list|show|decide`: the review queue from a terminal (reviewer)."""

from __future__ import annotations

import argparse
import json
from urllib.parse import quote

from gateway.cli import CliError
from gateway.cli.remote import add_remote_arguments, call, show
from gateway.policy import REASONS


def register(sub: argparse._SubParsersAction) -> None:
    review = sub.add_parser("review", help="work the human review queue")
    rsub = review.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    ls = rsub.add_parser("list", help="tickets, newest first")
    ls.add_argument("--status", default="pending", choices=("pending", "decided", "expired", "all"))
    ls.add_argument("--model")
    add_remote_arguments(ls)
    ls.set_defaults(func=_list)
    sh = rsub.add_parser("show", help="one ticket: the request, the model's recommendation, why it was held")
    sh.add_argument("ticket")
    add_remote_arguments(sh)
    sh.set_defaults(func=_show)
    de = rsub.add_parser("decide", help="approve, override or reject a held ticket; agree or disagree with a sample")
    de.add_argument("ticket")
    de.add_argument("decision", choices=("approve", "override", "reject", "agree", "disagree"))
    de.add_argument("--note", default="")
    de.add_argument("--reason", choices=REASONS,
                    help="why the answer was wrong (disagree, override, reject): counts towards output-quality incidents")
    de.add_argument("--response", help="override: the answer the client receives, as JSON")
    add_remote_arguments(de)
    de.set_defaults(func=_decide)


def _list(args: argparse.Namespace) -> int:
    params = {"status": args.status, **({"model": args.model} if args.model else {})}
    show(args, call(args, "GET", "/review/tickets", params=params), _tickets)
    return 0


def _tickets(data: dict) -> str:
    lines = [f"{t['id']}  {t['status']:<8} {t['kind']:<6} {t['model']}/{t['version']} level {t['level']}  "
             f"age {t['age_seconds']:.0f}s  {t['reason']}" for t in data["tickets"]]
    return "\n".join(lines) or "no tickets"


def _show(args: argparse.Namespace) -> int:
    show(args, call(args, "GET", f"/review/tickets/{quote(args.ticket, safe='')}"), lambda data: json.dumps(data, indent=2))
    return 0


def _decide(args: argparse.Namespace) -> int:
    body: dict = {"note": args.note}
    if args.reason is not None:
        body["reason"] = args.reason
    if args.decision in ("agree", "disagree"):
        body["verdict"] = args.decision
    else:
        body["action"] = args.decision
    if args.response is not None:
        try:
            body["response"] = json.loads(args.response)
        except ValueError:
            raise CliError("--response must be JSON, e.g. '{\"decision\": \"deny\"}'") from None
    data = call(args, "POST", f"/review/tickets/{quote(args.ticket, safe='')}/decision", body)
    show(args, data, lambda d: f"{d['id']}: {d['decision'].get('action') or d['decision'].get('verdict')} by {d['decision']['by']}")
    return 0
