"""Training: datasets, the model registry, the training loop and run directories."""
