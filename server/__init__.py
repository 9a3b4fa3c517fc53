"""MLFS Edge delivery server (see issue 4)."""
