"""Data: readers for user files, prepared data sets, tokenised batches, calibration text."""
