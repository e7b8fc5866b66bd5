"""Training: synthetic and real video data, the train/predict loop, experiments."""
