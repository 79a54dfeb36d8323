"""Shared fixtures: real servers on free loopback ports, nothing faked."""
