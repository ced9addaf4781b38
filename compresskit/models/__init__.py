"""Finding and loading models: the embedded default model, local directories, hub ids."""
from .embedded import DEFAULT_MODEL, EMBEDDED, embedded_path
from .loading import CorruptCheckpointError, ModelNotFoundError, load_pretrained, resolve_model

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "embedded_path", "CorruptCheckpointError", "ModelNotFoundError",
           "load_pretrained", "resolve_model"]
