"""The control plane's HTTP layer: thin handlers over plain functions in the domain modules."""
