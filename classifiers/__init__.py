"""Expression classifiers: architectures, batch augmentation, the training loop and what a step sees (batches.py), the judge, metrics and saved models."""
