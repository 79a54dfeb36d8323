"""Control state: the small documents (levels, active versions, verdicts) every replica mirrors."""
