"""A live check of the evidence log: the bytes on disk still hash to what the checkpoints sign.

Each run reads the records added since the previous run back from disk, extends its own
copy of the tree with their leaf hashes and compares the root with the latest signed
checkpoint. Cheap (only new records are read), so it can run every few minutes on a busy
log; `gateway evidence verify` remains the full, offline check.
"""

from __future__ import annotations

from hashlib import sha256

from .log import EvidenceLog
from .merkle import Frontier


class TailCheck:
    """Re-hashes, run after run, the records each new checkpoint covers (see the module docstring)."""

    def __init__(self, log: EvidenceLog) -> None:
        self.log = log
        self.frontier: Frontier | None = None

    def run(self) -> str | None:
        """None when the log checks out, else what is wrong. Blocking: run it on a worker thread."""
        checkpoint = self.log.latest_checkpoint()
        if self.frontier is None or self.frontier.size > checkpoint.size:
            self.frontier = self.log.frontier_at(checkpoint.size)
            return None
        start = self.frontier.size
        frontier = self.frontier.copy()
        for index in range(start, checkpoint.size):
            try:
                leaf = self.log.read_leaf(index)
            except KeyError:  # removed by retention: the tree files still vouch for it
                self.frontier = self.log.frontier_at(checkpoint.size)
                return None
            except Exception as exc:
                return f"record {index} cannot be read back: {exc}"
            frontier.append(0, sha256(b"\x00" + leaf).digest())
        if frontier.root() != checkpoint.root:
            return (f"records {start} to {checkpoint.size - 1} on disk no longer hash to the root signed in the "
                    f"checkpoint of size {checkpoint.size}: the log was changed")
        self.frontier = frontier
        return None
