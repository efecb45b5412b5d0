"""Training: datasets and loaders, the loop (DDP under torchrun), fine-tuning, evaluation."""
