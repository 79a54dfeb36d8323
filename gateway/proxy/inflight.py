"""Answers streaming right now, per model: what a pause (level 4) ends at once.

The data plane registers each relayed stream here while it flows. When a model (or the
whole gateway) goes to level 4 and the policy says `end_streams_on_pause`, every stream
of that model is aborted, so no more of the model's words reach a client.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.control import keys
from gateway.upstream import UpstreamResponse

log = logging.getLogger("gateway.proxy")


class Streams:
    def __init__(self, *, end_on_pause: bool) -> None:
        self.end_on_pause = end_on_pause
        self._by_model: dict[str, set[UpstreamResponse]] = {}

    def of(self, model: str) -> set[UpstreamResponse]:
        """The set a relay adds its response to while it streams."""
        return self._by_model.setdefault(model, set())

    def end(self, model: str | None) -> int:
        """End the streams in flight for `model` (or every model); returns how many."""
        ended = 0
        for name, responses in self._by_model.items():
            if model is None or name == model:
                for response in list(responses):
                    response.abort("the model was paused (level 4) while this answer streamed")
                    ended += 1
        return ended

    def on_state_change(self, key: keys.Key, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """A level 4 landing (on any replica) ends the affected streams here."""
        if isinstance(key, keys.Level) and new.get("level") == 4 and self.end_on_pause:
            ended = self.end(key.model)
            if ended:
                log.warning("level 4: ended %d stream(s) in flight", ended, extra={"model": key.model or "*"})
