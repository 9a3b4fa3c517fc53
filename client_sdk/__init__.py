"""MLFS Edge client SDK: no torch on devices (see issue 4)."""
