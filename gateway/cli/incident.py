"""`gateway incident list|show|ack|note|resolve`: incidents on a running gateway (operator)."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from gateway.cli.remote import add_remote_arguments, call, show
from gateway.cli.remote import when as _when


def register(sub: argparse._SubParsersAction) -> None:
    incident = sub.add_parser("incident", help="list, acknowledge and resolve incidents")
    isub = incident.add_subparsers(dest="incident_command", metavar="ACTION", required=True)
    ls = isub.add_parser("list", help="incidents, newest first")
    ls.add_argument("--status", choices=("open", "acknowledged", "resolved"))
    add_remote_arguments(ls)
    ls.set_defaults(func=_list)
    for name, help_text in (("show", "one incident with its timeline"), ("ack", "acknowledge: someone is on it"),
                            ("note", "add a note to the timeline"), ("resolve", "close it, with a note on what was found and done")):
        p = isub.add_parser(name, help=help_text)
        p.add_argument("incident")
        if name in ("ack", "note", "resolve"):
            p.add_argument("--note", required=name != "ack", default="")
        add_remote_arguments(p)
        p.set_defaults(func=_act, action=name)


def _list(args: argparse.Namespace) -> int:
    def render(data: dict) -> str:
        lines = [f"{i['id']}  {i['status']:<12} {i['severity']:<8} {i['category']:<12} {i.get('model') or '-':<10} "
                 f"{_when(i['opened_at'])}  {i['summary']}" for i in data["incidents"]]
        return "\n".join(lines) or "no incidents"

    show(args, call(args, "GET", "/admin/incidents", params={"status": args.status} if args.status else None), render)
    return 0


def _timeline(data: dict) -> str:
    lines = [f"{data['id']}  {data['status']}  {data['severity']} {data['category']} ({data['trigger']})  "
             f"{data.get('model') or ''} {data.get('version') or ''}", f"  {data['summary']}"]
    lines += [f"  {_when(e['at'])}  {e['type']:<12} {e.get('by', '')}: {e.get('text', '')}" for e in data["timeline"]]
    return "\n".join(lines)


def _act(args: argparse.Namespace) -> int:
    path = f"/admin/incidents/{quote(args.incident, safe='')}"
    if args.action == "show":
        data = call(args, "GET", path)
    else:
        endpoint = {"ack": "ack", "note": "notes", "resolve": "resolve"}[args.action]
        data = call(args, "POST", f"{path}/{endpoint}", {"note": args.note})
    show(args, data, _timeline if args.action == "show" else lambda d: f"{d['id']}: {d['status']}")
    return 0



