"""Tamper-evident evidence log: RFC 9162 Merkle tree over append-only segments.

The public face of the library: import from here. The modules behind it are private;
docs/evidence.md describes the on-disk format and the design choices.
"""

from .bodies import pack_body, unpack_body
from .bundle import BundleProblem, BundleReport, BundleSummary, FleetSummary, verify_bundle, write_bundle, write_fleet_bundle
from .canonical_json import canonical
from .checkpoints import Checkpoint
from .cosignature import Cosignature, Witnessed, witness_name
from .crypto import generate_signing_key, load_public_key, load_public_keys, load_signing_key, public_pem, write_keypair
from .errors import BundleError, EvidenceLogCorrupt, EvidenceLogError, LogInUse, VerifyError
from .log import EvidenceLog
from .reader import LogReader
from .report import Problem, Report
from .verify import LogProblem, VerifyReport, verify_log
from .watch import TailCheck
from .witness import Observation, Witness, read_witnessed

__all__ = [
    "EvidenceLog", "LogReader", "canonical", "Checkpoint", "TailCheck",
    "Witness", "Observation", "Witnessed", "Cosignature", "read_witnessed", "witness_name",
    "EvidenceLogError", "EvidenceLogCorrupt", "LogInUse", "VerifyError", "BundleError",
    "Problem", "Report", "LogProblem", "VerifyReport", "verify_log",
    "BundleProblem", "BundleReport", "BundleSummary", "FleetSummary", "verify_bundle", "write_bundle",
    "write_fleet_bundle",
    "pack_body", "unpack_body",
    "generate_signing_key", "load_signing_key", "load_public_key", "load_public_keys", "public_pem", "write_keypair",
]
