"""Which Redis master the sentinels name, watched on a thread of its own while faults are injected."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scripts.fleetlib.topology import Fleet


class MasterWatch:
    """Sentinel: which master the sentinels name, sampled every 50 ms on a thread of its own, and for each new one
    when it first had a replica online (what a write needs to be acknowledged, `store_durability.replicas`)."""

    def __init__(self, fleet: Fleet, interval: float = 0.05) -> None:
        self.fleet, self.interval = fleet, interval
        self.masters: list[list[Any]] = []  # [since, port, first time a replica was online or None]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-master-watch", daemon=True)

    def start(self) -> "MasterWatch":
        if self.fleet.store == "sentinel":
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        import redis

        while not self._stop.is_set():
            port = self.fleet.master_port()
            if port is not None and (not self.masters or self.masters[-1][1] != port):
                self.masters.append([time.monotonic(), port, None])
            if self.masters and self.masters[-1][2] is None:
                try:
                    info = redis.Redis(port=self.masters[-1][1], socket_timeout=1).info("replication")
                    online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                              and v.get("state") == "online"]
                    if info.get("role") == "master" and online:
                        self.masters[-1][2] = time.monotonic()
                except redis.RedisError:
                    pass
            self._stop.wait(self.interval)

    def describe(self, t0: float) -> str:
        parts = []
        for n, (since, port, online) in enumerate(self.masters):
            when = "at the start" if n == 0 else f"from +{since - t0:.1f}s"
            ready = f", a replica online {online - since:.1f}s later" if online is not None and n else \
                ("" if online is not None else ", no replica online")
            parts.append(f":{port} {when}{ready}")
        return "; ".join(parts)
