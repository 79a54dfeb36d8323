"""`gateway versions MODEL`, `gateway activate MODEL VERSION`, `gateway rollback MODEL` (operator)."""

from __future__ import annotations

import argparse
from urllib.parse import quote

from gateway.cli.remote import add_remote_arguments, call, show
from gateway.cli.remote import when as _when


def register(sub: argparse._SubParsersAction) -> None:
    versions = sub.add_parser("versions", help="a model's versions, which is active, and the switch history")
    versions.add_argument("model")
    add_remote_arguments(versions)
    versions.set_defaults(func=_versions)

    activate = sub.add_parser("activate", help="switch a model to a version, after its checks pass")
    activate.add_argument("model")
    activate.add_argument("version")
    activate.add_argument("--reason", required=True)
    add_remote_arguments(activate)
    activate.set_defaults(func=_activate)

    rollback = sub.add_parser("rollback", help="switch back: to --to, or to the last earlier version that passes its checks")
    rollback.add_argument("model")
    rollback.add_argument("--to", help="the version (default: the most recent earlier one that still verifies)")
    rollback.add_argument("--reason", required=True)
    add_remote_arguments(rollback)
    rollback.set_defaults(func=_rollback)


def _versions(args: argparse.Namespace) -> int:
    def render(data: dict) -> str:
        lines = [f"{data['model']}: active {data['active']}"]
        for name, v in data["versions"].items():
            mark = "*" if v["active"] else " "
            digest = (v.get("root_digest") or "")[:16]
            lines.append(f" {mark} {name:<12} {v['status']:<9} {digest:<16} {v['upstream']}  added {_when(v.get('added_at'))} by {v.get('added_by') or '-'}")
        for h in data["history"][:20]:
            lines.append(f"   {_when(h.get('at'))} {h.get('action'):<9} {h.get('from') or '-'} -> {h.get('to') or '-'} by {h.get('actor')}: {h.get('reason')}")
        return "\n".join(lines)

    show(args, call(args, "GET", f"/admin/models/{quote(args.model, safe='')}/versions"), render)
    return 0


def _outcome(data: dict) -> str:
    line = (f"{data['model']}: {data['from']} -> {data['to']} ({data['action']}, epoch {data['epoch']}, "
            f"applied by {data['applied_by']}/{data['replicas']} replicas); checks: "
            + ", ".join(f"{c['check']} ok" for c in data["checks"]))
    if data.get("unconfirmed"):
        line += f"; not confirmed by: {', '.join(data['unconfirmed'])}"
    return line


def _activate(args: argparse.Namespace) -> int:
    body = {"version": args.version, "reason": args.reason}
    show(args, call(args, "POST", f"/admin/models/{quote(args.model, safe='')}/activate", body), _outcome)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    body = {"reason": args.reason, **({"to": args.to} if args.to else {})}
    show(args, call(args, "POST", f"/admin/models/{quote(args.model, safe='')}/rollback", body), _outcome)
    return 0
