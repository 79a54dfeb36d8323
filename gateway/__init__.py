"""The oversight gateway: a reverse proxy that keeps a human in charge of what a model decides."""

__version__ = "0.1.0"
