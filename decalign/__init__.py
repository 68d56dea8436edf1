"""DecAlign Studio: train, run, explain and audit DecAlign multimodal models."""

__version__ = "0.1.0"
