"""Writing the evidence of a window from every log of the fleet: one part per log, witnessed.

With only this replica's log in the evidence directory the export is a bundle of that log,
as ever. With other replicas' logs beside it, it is a fleet bundle (gateway.evidence):
each log's records proven against that log's own signed checkpoint, with the
cosignatures its witnesses made. Before writing, the export gives the fleet a moment to
catch up: the other writers to checkpoint records of the window they hold, the
witnesses to cosign the checkpoints the parts use.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.evidence import BundleSummary, EvidenceLog, LogReader, write_bundle, write_fleet_bundle
from gateway.recording.fleet import FleetLogs


@dataclass(frozen=True)
class Window:
    since: float | None
    until: float | None
    model: str | None


class FleetExport:
    def __init__(self, fleet: FleetLogs, *, catch_up: float) -> None:
        self.fleet = fleet
        self.catch_up = catch_up  # seconds the export waits at most for checkpoints and cosignatures

    async def write(self, out: Path, window: Window, *, extras: dict[str, bytes], description: dict) -> int:
        """Write the bundle to `out`; returns how many records it holds."""
        deadline = time.monotonic() + self.catch_up
        await self._until(deadline, self._all_checkpointed, window)
        own_cp = await asyncio.to_thread(self.fleet.own.checkpoint_now)
        await self._until(deadline, self._all_cosigned, own_cp.size)
        return await asyncio.to_thread(self._write, out, window, extras, description)

    async def _until(self, deadline: float, done, *args) -> None:
        while not await asyncio.to_thread(done, *args) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def _all_checkpointed(self, window: Window) -> bool:
        """No other log holds records of the window that its writer has not yet checkpointed."""
        return all(not reader.select_uncovered(window.since, window.until, window.model) for reader in self.fleet.others())

    def _all_cosigned(self, own_size: int) -> bool:
        """Every witness that ever cosigned a log has cosigned the checkpoint its part will use."""
        logs: list[tuple[str, int]] = [(self.fleet.own.origin, own_size)]
        logs += [(r.origin, r.size) for r in self.fleet.others()]
        for origin, size in logs:
            best: dict[str, int] = {}
            for witnessed in self.fleet.cosigned(origin):
                for cosig in witnessed.cosignatures:
                    best[cosig.name] = max(best.get(cosig.name, 0), witnessed.checkpoint.size)
            if any(seen < size for seen in best.values()):
                return False
        return True

    def _write(self, out: Path, window: Window, extras: dict[str, bytes], description: dict) -> int:
        own = self.fleet.own
        others = [r for r in self.fleet.others() if r.latest_checkpoint() is not None]
        if not others:
            return self._part(out, own, window, extras, description).records
        parts = [self._part(out.with_name(f"part-{n:02d}.tar.gz"), log, window, {}, description)
                 for n, log in enumerate([own, *others])]
        try:
            return write_fleet_bundle(out, parts, signing_key=self.fleet.signing_key, extras=extras,
                                      description=description).records
        finally:
            for part in parts:
                part.path.unlink(missing_ok=True)

    def _part(self, out: Path, log: EvidenceLog | LogReader, window: Window, extras: dict[str, bytes],
              description: dict) -> BundleSummary:
        indexes = list(log.select(window.since, window.until, window.model))
        reader = isinstance(log, LogReader)
        awaiting = len(log.select_uncovered(window.since, window.until, window.model)) if reader else 0
        return write_bundle(out, log, indexes, signing_key=self.fleet.signing_key, extras=extras,
                            description={**description, "records_awaiting_checkpoint": awaiting},
                            checkpoint=log.latest_checkpoint() if reader else None,
                            cosigned=self.fleet.cosigned(log.origin), witness_keys=self.fleet.witness_keys())
