"""`gateway level get|set` and `gateway kill`: oversight levels on a running gateway (operator)."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from gateway.cli.remote import add_remote_arguments, call, show
from gateway.cli.remote import when as _when


def register(sub: argparse._SubParsersAction) -> None:
    level = sub.add_parser("level", help="read or change oversight levels")
    lsub = level.add_subparsers(dest="level_command", metavar="ACTION", required=True)
    get = lsub.add_parser("get", help="every level, who set it, when and why")
    add_remote_arguments(get)
    get.set_defaults(func=_get)
    put = lsub.add_parser("set", help="set the global level, or a model's with --model")
    put.add_argument("level", type=int, choices=range(5), metavar="N", help="0 to 4")
    put.add_argument("--model", help="the model (default: the global level)")
    put.add_argument("--reason", required=True)
    add_remote_arguments(put)
    put.set_defaults(func=_set)
    approve = lsub.add_parser("approve", help="approve another operator's pending lowering")
    approve.add_argument("change")
    approve.add_argument("--reason")
    add_remote_arguments(approve)
    approve.set_defaults(func=_approve)

    kill = sub.add_parser("kill", help="level 4 at once: the model (or every model) stops answering")
    kill.add_argument("--model", help="the model (default: all of them)")
    kill.add_argument("--reason", required=True)
    add_remote_arguments(kill)
    kill.set_defaults(func=_kill)


def _get(args: argparse.Namespace) -> int:
    show(args, call(args, "GET", "/admin/oversight"), _levels)
    return 0


def _levels(data: dict) -> str:
    g = data["global"]
    lines = [f"global  level {g['level']}  set by {g['set_by'] or '-'} at {_when(g['at'])}: {g['reason'] or '-'}"]
    for name, m in data["models"].items():
        lines.append(f"{name:<8}level {m['level']} (effective {m['effective']})  set by {m['set_by'] or '-'} "
                     f"at {_when(m['at'])}: {m['reason'] or '-'}")
    for change in data["pending_changes"]:
        lines.append(f"pending {change['id']}: {change['model'] or 'global'} {change['from']} -> {change['to']} "
                     f"by {change['requested_by']}: {change['reason']}")
    if data.get("stale"):
        lines.append("warning: this replica cannot confirm the state; it serves every model at the fail-closed level")
    return "\n".join(lines)


def _outcome(data: dict) -> str:
    scope = data["model"] or "global"
    if data["status"] == "pending_approval":
        return f"{scope}: lowering to {data['change']['to']} waits for a second operator: gateway level approve {data['change']['id']}"
    line = f"{scope}: level {data['previous']} -> {data['level']} (epoch {data['epoch']}, applied by {data['applied_by']}/{data['replicas']} replicas)"
    if data.get("unconfirmed"):
        line += f"; not confirmed by: {', '.join(data['unconfirmed'])}"
    return line


def _set(args: argparse.Namespace) -> int:
    path = f"/admin/oversight/models/{quote(args.model, safe='')}" if args.model else "/admin/oversight/global"
    show(args, call(args, "PUT", path, {"level": args.level, "reason": args.reason}), _outcome)
    return 0


def _approve(args: argparse.Namespace) -> int:
    show(args, call(args, "POST", f"/admin/oversight/changes/{args.change}/approve",
                    {"reason": args.reason} if args.reason else None), _outcome)
    return 0


def _kill(args: argparse.Namespace) -> int:
    body = {"reason": args.reason, **({"model": args.model} if args.model else {})}
    show(args, call(args, "POST", "/admin/kill", body), _outcome)
    return 0
