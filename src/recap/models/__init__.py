"""The captioner's networks: music encoder, fusion, BART composition, copy head, losses, tokenizer."""
