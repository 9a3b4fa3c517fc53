"""MLFS slicer: elastic supernet, stage-wise adapters, exact subnet extraction."""
