"""Self-verifying forensic export: selected records, their proofs and everything needed to check them.

`write_bundle` packs one log's `.tar.gz` (members listed in `format`), `write_fleet_bundle`
packs several such bundles as one export of a fleet (see `fleet`); `verify_bundle` checks
either offline with nothing but this library. The modules behind this face are private.
"""

from ..errors import BundleError
from .fleet import FleetSummary, verify_bundle, write_fleet_bundle
from .verifier import BundleProblem, BundleReport
from .writer import BundleSummary, write_bundle

__all__ = ["BundleError", "BundleProblem", "BundleReport", "BundleSummary", "FleetSummary", "verify_bundle",
           "write_bundle", "write_fleet_bundle"]
