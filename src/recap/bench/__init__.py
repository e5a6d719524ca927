"""The rendered-songs benchmark: scores with lyrics rendered to audio, captions that need both.

See docs/benchmark.md. Public API: the slot names, the caption parser and scorer, the truth loader
and the audio tags the music-encoder tagger trains on.
"""

from recap.bench.scoring import load_truth, score_captions
from recap.bench.slots import (
    AUDIO_SLOTS,
    INTERPRETIVE_SLOTS,
    LYRICS_SLOTS,
    audio_tag_vocabulary,
    audio_tags,
)
from recap.bench.templates import parse_caption

__all__ = [
    "AUDIO_SLOTS",
    "INTERPRETIVE_SLOTS",
    "LYRICS_SLOTS",
    "audio_tag_vocabulary",
    "audio_tags",
    "load_truth",
    "parse_caption",
    "score_captions",
]
