"""MLFS training: the stage loop, losses, evaluation of palettes, whole training jobs."""
