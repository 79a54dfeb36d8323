"""Exchanges in flight, per model: what a raised level reaches before their answers do.

A level change lands on every replica through the control state's mirror; this listener
runs as it is applied, before the replica confirms the change, so when `POST /admin/kill`
(or any raise) answers, every exchange of that model that has not delivered its answer is
already marked with the new level:
- waiting on the model at a raise to 4: its task is interrupted at once (the upstream call
  is aborted) and the request becomes a human task;
- waiting on the model, or buffering, at a raise to 2 or 3: the answer, when it comes, is
  planned again at the new level (held, or judged on its confidence) instead of served;
- already streaming at a raise to 3 or 4 (with `oversight.end_streams_on_pause`): the
  stream ends at once; what was sent cannot be recalled, the rest is never sent.
The data plane checks the mark at the last moment before an answer starts.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from gateway.control import keys
from gateway.proxy.exchange import Exchange

log = logging.getLogger("gateway.proxy")

UPSTREAM, STREAMING = "upstream", "streaming"


class Levels(Protocol):
    def level_for(self, model: str) -> int: ...


class InFlight:
    def __init__(self, levels: Levels, *, end_streams_on_pause: bool) -> None:
        self.levels = levels
        self.end_streams = end_streams_on_pause
        self._by_model: dict[str, set[Exchange]] = {}

    def enter(self, ex: Exchange) -> None:
        exchanges = self._by_model.get(ex.model)
        if exchanges is None:
            exchanges = self._by_model[ex.model] = set()
        exchanges.add(ex)

    def leave(self, ex: Exchange) -> None:
        exchanges = self._by_model.get(ex.model)
        if exchanges is not None:
            exchanges.discard(ex)

    def counts(self) -> dict[str, int]:
        """Exchanges in flight per model now (read by the metrics at scrape time)."""
        return {model: len(exchanges) for model, exchanges in list(self._by_model.items())}

    def on_state_change(self, key: keys.Key, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        if isinstance(key, keys.Level):
            self._reassess(list(self._by_model) if key.model is None else [key.model], key.model or "*")

    def on_state_lost(self) -> None:
        """The replica no longer knows the state (it fails closed): every exchange in flight is raised with it."""
        self._reassess(list(self._by_model), "*")

    def _reassess(self, models: list[str], scope: str) -> None:
        interrupted = 0
        for model in models:
            level = self.levels.level_for(model)
            if level < 2:
                continue  # a raise to 1 records more; nothing on the way to a client changes
            for ex in list(self._by_model.get(model, ())):
                if level > ex.level and not ex.finished and (ex.raised_to is None or level > ex.raised_to):
                    ex.raised_to = level
                    interrupted += self._interrupt(ex, level)
        if interrupted:
            log.warning("level raised: interrupted %d exchange(s) in flight", interrupted, extra={"model": scope})

    def _interrupt(self, ex: Exchange, level: int) -> int:
        """Stop what must not go on at `level` now; everything else waits for its next check."""
        stop = (ex.phase == UPSTREAM and level >= 4) or (ex.phase == STREAMING and level >= 3 and self.end_streams)
        if stop and ex.stop is not None:
            ex.stop()
            return 1
        return 0
