"""`gateway token new` (offline: a token and the config line that admits it) and `gateway token
issue|list|revoke|expire` (on a running gateway, fleet-wide: `/admin/tokens`, operator)."""

from __future__ import annotations

import argparse
import re
from urllib.parse import quote

from gateway.auth import new_token
from gateway.cli import CliError
from gateway.cli.remote import add_remote_arguments, call, show
from gateway.cli.remote import when as _when
from gateway.config import ROLES

_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("token", help="make, issue, list, expire and revoke access tokens")
    tsub = parser.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    new = tsub.add_parser("new", help="print a new token and its config entry")
    new.add_argument("--role", required=True, choices=ROLES)
    new.add_argument("--id", required=True, help="a name for the token, used in logs and records")
    new.set_defaults(func=_new)

    issue = tsub.add_parser("issue", help="issue a token on the running gateway (every replica admits it at once)")
    issue.add_argument("--id", required=True, help="a name for the token, used in logs and records")
    issue.add_argument("--role", required=True, action="append", choices=ROLES, help="repeat for several roles")
    issue.add_argument("--ttl", help="lifetime such as 30m, 12h, 7d (default: until revoked)")
    issue.add_argument("--reason", required=True)
    add_remote_arguments(issue)
    issue.set_defaults(func=_issue)

    listing = tsub.add_parser("list", help="every token: from the config and issued, with its state")
    add_remote_arguments(listing)
    listing.set_defaults(func=_list)

    for name, help_text in (("revoke", "refuse a token at once on every replica (final)"),
                            ("expire", "make a token stop working now (or at --at, unix seconds)")):
        action = tsub.add_parser(name, help=help_text)
        action.add_argument("id")
        action.add_argument("--reason", required=True)
        if name == "expire":
            action.add_argument("--at", type=_at, help="unix seconds or ISO 8601, e.g. 2026-11-27T10:00:00Z "
                                                         "(no zone: UTC; default: now)")
        add_remote_arguments(action)
        action.set_defaults(func=_revoke if name == "revoke" else _expire)


def _at(text: str) -> float:
    """A time given as unix seconds or ISO 8601 (a time without a zone is UTC)."""
    from datetime import datetime, timezone

    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected unix seconds or ISO 8601 such as 2026-11-27T10:00:00Z (got {text!r})") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _check_id(value: str) -> None:
    if not re.fullmatch(_ID, value):
        raise CliError(f"--id {value!r}: use letters, digits, '.', '_' or '-' (up to 64)")


def _new(args: argparse.Namespace) -> int:
    _check_id(args.id)
    token, digest = new_token()
    print(f"token: {token}")
    print("# add to `tokens:` in the config (the token itself is not stored anywhere):")
    print(f"  - {{id: {args.id}, role: {args.role}, sha256: {digest}}}")
    return 0


def _ttl(value: str | None) -> float | None:
    if value is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", value.strip())
    if not match:
        raise CliError(f"--ttl {value!r}: expected a duration such as 90s, 30m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _confirmed(data: dict) -> str:
    line = f"(epoch {data['epoch']}, applied by {data['applied_by']}/{data['replicas']} replicas)"
    if data.get("unconfirmed"):
        line += f"; not confirmed by: {', '.join(data['unconfirmed'])}"
    return line


def _issue(args: argparse.Namespace) -> int:
    _check_id(args.id)
    body = {"id": args.id, "roles": args.role, "reason": args.reason, "ttl": _ttl(args.ttl)}
    show(args, call(args, "POST", "/admin/tokens", body),
         lambda d: f"token: {d['token']}\n# {d['id']} ({', '.join(d['roles'])}) issued {_confirmed(d)}; "
                   f"shown once, the gateway keeps only its hash")
    return 0


def _rows(data: dict) -> str:
    lines = []
    for t in data["tokens"]:
        extra = f" by {t.get('revoked_by')}: {t.get('revoke_reason')}" if t["status"] == "revoked" else ""
        lines.append(f"{t['id']:<20} {','.join(t['roles']):<18} {t['source']:<7} {t['status']:<8} "
                     f"expires {_when(t.get('expires_at'))}{extra}")
    return "\n".join(lines) or "no tokens"


def _list(args: argparse.Namespace) -> int:
    show(args, call(args, "GET", "/admin/tokens"), _rows)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    data = call(args, "POST", f"/admin/tokens/{quote(args.id, safe='')}/revoke", {"reason": args.reason})
    show(args, data, lambda d: f"{d['id']}: already revoked" if d.get("already") else f"{d['id']}: revoked {_confirmed(d)}")
    return 0


def _expire(args: argparse.Namespace) -> int:
    body = {"reason": args.reason, **({"at": args.at} if args.at is not None else {})}
    data = call(args, "POST", f"/admin/tokens/{quote(args.id, safe='')}/expire", body)
    show(args, data, lambda d: f"{d['id']}: expires at {_when(d['expires_at'])} {_confirmed(d)}")
    return 0
