"""The human review queue: held answers, human tasks, post-hoc samples, and their decisions."""
