"""Video models: TimeSformer (five space-time schemes, checkpoint loading) and GenerativeTimeSformer."""
from .generative import GenerativeTimeSformer  # noqa: F401
from .registry import create_model, is_model, list_models, model_class, model_config, register_model  # noqa: F401
from .timesformer import TimeSformer  # noqa: F401
from .vit import load_vit_weights_into_timesformer  # noqa: F401
