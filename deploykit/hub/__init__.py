"""Model hubs: the backend interface and registry, Hugging Face, ModelScope, and pull."""
