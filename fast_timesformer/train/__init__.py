"""Training: synthetic and real-video datasets, the trainer (one process or torchrun/DDP), safetensors
checkpoints with exact resume, and the scheme x backend experiment. See docs/train.md."""
from .data import BouncingShapes, ClipTransform, MovingShapes, VideoFolder, read_video  # noqa: F401
from .trainer import TrainConfig, Trainer, load_trained_model, predict_video  # noqa: F401
