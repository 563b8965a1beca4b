"""Transforms bound to the model config: aspect-preserving resize and pad, normalisation."""
