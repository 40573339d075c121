"""Training: the validated config, the loop, losses and their target assignments, AutoAnchor, hyperparameters and their evolution."""
