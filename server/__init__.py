"""MLFS Edge delivery server: resolves a device's budget to a subnet, builds its artifact once, serves it."""
