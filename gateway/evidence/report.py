"""What a verification concludes: its problems, and the one summary line the CLI prints.

The log verifier (`verify`) and the bundle verifier (`bundle`) both report through these
types, so a problem reads "where: reason" and a summary starts "OK: " or "FAILED: " alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar


class Problem:
    """Something that failed verification: `where` (a record, a file, a checkpoint) and `reason`."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


P = TypeVar("P", bound=Problem)


@dataclass(kw_only=True)
class Report(Generic[P]):
    """A verification's outcome: ok when nothing failed; `summary()` says so in one line."""

    problems: list[P] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> P | None:
        return self.problems[0] if self.problems else None

    def summary(self) -> str:
        if not self.ok:
            more = len(self.problems) - 1
            return f"FAILED: {self.first_problem}" + (f" [+{more} more problem(s)]" if more else "")
        return f"OK: {self.verified()}"

    def verified(self) -> str:
        """What was verified, as the summary says it after "OK: "."""
        raise NotImplementedError
