"""The language of subnets, torch-free: model dims, ``SubnetConfig``, search spaces, tensor shapes and counts."""
