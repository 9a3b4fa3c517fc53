"""PyTorch models: elastic ops, the sliced encoder and decoder, low-rank adapters, the supernet."""
