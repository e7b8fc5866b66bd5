"""Video models: TimeSformer (five space-time schemes, checkpoint loading) and GenerativeTimeSformer."""
