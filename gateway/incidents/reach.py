"""How many users could not get a prediction: the seed's "inability to serve predictions to > 5 % of users".

The error-rate trigger counts requests; one busy client can hide many who got nothing,
or make a few failures look like many. Here each caller counts once: a token id, or, on
`/v1` routes, the OpenAI body's `user` field under that token (one service token often
relays many end users, and names them there). A caller is affected when at least one of
its requests in the window failed (a 5xx or the model unreachable).
"""

from __future__ import annotations

from gateway.incidents.counters import TrafficCounters
from gateway.policy import UsersAffected

MAX_USER = 128  # a `user` value longer than this is cut: a caller cannot make the counters' field names huge


def user_of(token: str | None, address: str, body_user: object) -> str:
    """Who a request was for: the body's `user` (within its token), else the token id, else the address."""
    who = token or f"addr:{address}"
    if isinstance(body_user, str) and body_user:
        return f"{who}/{body_user[:MAX_USER]}"
    return who


async def users_affected(counters: TrafficCounters, t: UsersAffected, model: str, version: str):
    counts = await counters.users(model, version, t.window)
    users = {name[2:] for name, value in counts.items() if name.startswith("n:") and value > 0}
    if len(users) < t.min_users:
        return None
    failed = {name[2:] for name, value in counts.items() if name.startswith("f:") and value > 0}
    share = len(failed) / len(users)
    if share <= t.threshold:
        return None
    return ("users_affected", "availability",
            f"{model} {version}: {len(failed)} of {len(users)} users ({share:.1%}) got no prediction within "
            f"{t.window / 60:g} min", {"share": share, "users": len(users), "affected": len(failed)}, t.window)
