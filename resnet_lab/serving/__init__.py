"""Serving: classifiers for uploads (GPU decoding, CUDA graphs) and the model zoo that loads and caches them."""
