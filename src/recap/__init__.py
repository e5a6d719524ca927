"""RECAP, the Retrieval Augmented Music Captioner.

The heavy modules load on first use, so `import recap` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "MusicEncoder": "recap.models.music_encoder",
    "MusicEncoderConfig": "recap.models.music_encoder",
    "RecapConfig": "recap.models.config",
    "RecapModel": "recap.models.model",
    "Captioner": "recap.inference.captioner",
    "RecapError": "recap.utils",
}

__all__ = [
    "Captioner",
    "MusicEncoder",
    "MusicEncoderConfig",
    "RecapConfig",
    "RecapError",
    "RecapModel",
]

if TYPE_CHECKING:
    from recap.inference.captioner import Captioner
    from recap.models.config import RecapConfig
    from recap.models.model import RecapModel
    from recap.models.music_encoder import MusicEncoder, MusicEncoderConfig
    from recap.utils import RecapError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'recap' has no attribute {name!r}")
