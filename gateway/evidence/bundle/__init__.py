"""Self-verifying forensic export: selected records, their proofs and everything needed to check them.

`write_bundle` packs one `.tar.gz` (members listed in `format`); `verify_bundle` checks one
offline with nothing but this library. The modules behind this face are private.
"""

from ..errors import BundleError
from .verifier import BundleProblem, BundleReport, verify_bundle
from .writer import BundleSummary, write_bundle

__all__ = ["BundleError", "BundleProblem", "BundleReport", "BundleSummary", "verify_bundle", "write_bundle"]
