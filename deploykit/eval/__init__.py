"""eval: LlamaFactory-compatible predict metrics on a model as deployed (Ollama, GGUF, HF)."""
