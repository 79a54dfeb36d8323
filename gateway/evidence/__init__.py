"""Tamper-evident evidence log: RFC 9162 Merkle tree over append-only segments.

The public face of the library: import from here. The modules behind it are private;
docs/evidence.md describes the on-disk format and the design choices.
"""

from .bodies import pack_body, unpack_body
from .bundle import BundleProblem, BundleReport, BundleSummary, verify_bundle, write_bundle
from .canonical_json import canonical
from .checkpoints import Checkpoint
from .crypto import generate_signing_key, load_public_key, load_public_keys, load_signing_key, public_pem, write_keypair
from .errors import BundleError, EvidenceLogCorrupt, EvidenceLogError, LogInUse, VerifyError
from .log import EvidenceLog
from .report import Problem, Report
from .verify import LogProblem, VerifyReport, verify_log
from .watch import TailCheck

__all__ = [
    "EvidenceLog", "canonical", "Checkpoint", "TailCheck",
    "EvidenceLogError", "EvidenceLogCorrupt", "LogInUse", "VerifyError", "BundleError",
    "Problem", "Report", "LogProblem", "VerifyReport", "verify_log",
    "BundleProblem", "BundleReport", "BundleSummary", "verify_bundle", "write_bundle",
    "pack_body", "unpack_body",
    "generate_signing_key", "load_signing_key", "load_public_key", "load_public_keys", "public_pem", "write_keypair",
]
