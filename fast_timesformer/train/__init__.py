"""Training: synthetic and real-video datasets, the trainer (one process or torchrun/DDP), safetensors
checkpoints with exact resume, and the scheme x backend experiment. See docs/train.md."""
from .config import TrainConfig  # noqa: F401
from .data import BouncingShapes, MovingShapes, VideoFolder  # noqa: F401
from .inference import load_trained_model, predict_video  # noqa: F401
from .trainer import Trainer  # noqa: F401
