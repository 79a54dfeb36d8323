"""This replica witnesses the others' evidence logs: cosigns their extensions, reports a rewritten one.

Every `interval` it first adopts the logs whose writers are gone (`FleetLogs.adopt_orphans`:
their last records get a signed checkpoint), then reads each other slot's latest checkpoint and hands it to its
`Witness` (gateway.evidence.witness). A log that is no longer consistent with what this
replica cosigned was rewritten, whoever signed it: that is logged, recorded in this
replica's own log and raised as a critical security incident (once per log and
checkpoint), and the log is never cosigned again by this replica.
"""

from __future__ import annotations

import asyncio
import logging

from gateway.evidence import Observation, Witness
from gateway.incidents.sink import Detection, IncidentSink, Orders
from gateway.recorder import Recorder
from gateway.recording.fleet import FleetLogs

log = logging.getLogger("gateway.evidence")


class Witnessing:
    def __init__(self, fleet: FleetLogs, witness: Witness, recorder: Recorder, incidents: IncidentSink, *,
                 interval: float) -> None:
        self.fleet = fleet
        self.witness = witness
        self.recorder = recorder
        self.incidents = incidents
        self.interval = interval
        self._reported: set[tuple[str, int, bytes]] = set()

    async def run_forever(self) -> None:
        while True:
            try:
                await self.once()
            except Exception:
                log.exception("witnessing the other evidence logs failed")
            await asyncio.sleep(self.interval)

    async def once(self) -> list[Observation]:
        """Look at every other log once; returns what was seen of each."""
        observations = await asyncio.to_thread(self._observe_all)
        for seen in observations:
            if seen.outcome == "inconsistent":
                await self._report(seen)
        return observations

    def _observe_all(self) -> list[Observation]:
        for origin in self.fleet.adopt_orphans():
            log.warning("evidence log %s: its writer is gone; recovered it and signed a checkpoint over its records",
                        origin)
        out = []
        for reader in self.fleet.others():
            try:
                out.append(self.witness.observe(reader))
            except OSError as exc:
                log.warning("cannot witness the evidence log %s: %s", reader.origin, exc)
        return out

    async def _report(self, seen: Observation) -> None:
        cp = seen.checkpoint
        key = (seen.origin, cp.size if cp else -1, cp.root if cp else b"")
        if key in self._reported:
            return
        self._reported.add(key)
        last = self.witness.last_cosigned(seen.origin)
        values = {"log": seen.origin, "size": cp.size if cp else None, "root": cp.root.hex() if cp else None,
                  "cosigned_size": last.size if last else None, "cosigned_root": last.root.hex() if last else None,
                  "witness": self.witness.name, "problem": seen.reason}
        summary = f"evidence log {seen.origin} is not consistent with what this replica witnessed: {seen.reason}"
        log.error(summary)
        actor = f"witness:{self.witness.name}"
        await self.recorder.action("evidence_log_inconsistent", actor=actor, reason=summary, **values)
        await self.incidents.raise_incident(Detection(
            category="security", trigger="evidence_tampering", severity="critical", summary=summary, values=values,
            orders=Orders(), actor=actor))
