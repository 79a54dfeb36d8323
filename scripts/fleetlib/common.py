"""What the fleet's parts agree on: the trial tokens, the store and fault names, the model."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository

# The quickstart's tokens (examples/quickstart.yaml): for trials on one machine only.
TOKENS = {"client": "gw_demo_client", "reviewer": "gw_demo_reviewer", "operator": "gw_demo_operator",
          "auditor": "gw_demo_auditor"}
STORES = ("sentinel", "redis", "cluster", "embedded")
FAULTS = ("replica", "master", "sentinel")
MODEL = "demo"
PREDICT = f"/models/{MODEL}/predict"

