"""The embedded demo models (tiny bases with real tokenizers, and a real LoRA fine-tune)."""
