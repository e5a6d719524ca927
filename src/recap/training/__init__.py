"""Training jobs: the captioner, the music-encoder tagger, text pretraining."""
