"""Model versions: the registry of every version, and atomic, checked switches between them."""
