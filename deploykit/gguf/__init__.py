"""The GGUF steps: convert a model folder, quantize, verify a GGUF."""
