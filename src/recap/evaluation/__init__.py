"""Scoring captions: metrics, evaluation runs, grounding diagnostics, the paper's experiments."""
