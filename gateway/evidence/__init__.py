"""Tamper-evident evidence log: RFC 9162 Merkle tree over append-only segments.

See docs/evidence.md for the on-disk format and the design choices.
"""

from .checkpoints import Checkpoint
from .log import EvidenceLog, canonical
from .recovery import EvidenceLogCorrupt, EvidenceLogError
from .verify import Problem, VerifyReport, verify_log

__all__ = [
    "Checkpoint",
    "EvidenceLog",
    "EvidenceLogCorrupt",
    "EvidenceLogError",
    "Problem",
    "VerifyReport",
    "canonical",
    "verify_log",
]
