"""Datasets as tensors on the training device, the sampler that batches them, and the file downloads."""
