"""User tools beside the stages: evaluate, predict (photos, video), explain, export-model, export, quality, sample."""
