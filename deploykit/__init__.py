"""deploykit: ship a fine-tuned model to a verified, running Ollama model."""

__version__ = "0.1.0"
