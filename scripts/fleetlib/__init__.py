"""The parts of `scripts/fleet.py`: a fleet on one machine (topology), load, faults and what held."""
