"""Model architectures (no file I/O here): towers, fusion, decoder, region detector."""

from cxrvlp.models.registry import create_model, list_models, model_config

__all__ = ["create_model", "list_models", "model_config"]
