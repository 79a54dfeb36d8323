"""Every exception the evidence library raises on purpose, so callers import them from one place.

Two families: the log cannot do what was asked (`EvidenceLogError` and its kinds), or a
verifier cannot even read what it was given (`VerifyError`, `BundleError`). Failing
verification is not an exception: it is a report with problems (see `report`).
"""


class EvidenceLogError(Exception):
    """The log cannot do what was asked (closed, in use, failed fsync, ...)."""


class LogInUse(EvidenceLogError):
    """The log directory is locked: another process, or another handle in this one, has it open."""


class EvidenceLogCorrupt(EvidenceLogError):
    """The directory holds damage that is not a crash artifact: run `gateway evidence verify`."""


class VerifyError(Exception):
    """The directory could not be read as an evidence log at all (as opposed to: it fails verification)."""


class BundleError(Exception):
    """Cannot write a bundle, or the file cannot be read as a bundle at all (as opposed to: it fails verification)."""


class SegmentError(Exception):
    """A segment whose magic or header cannot be read."""


class CheckpointError(ValueError):
    """Text that is not a well-formed checkpoint note."""
