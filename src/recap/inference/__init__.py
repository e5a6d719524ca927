"""Using a trained captioner: captioning, the song index, the web server."""
