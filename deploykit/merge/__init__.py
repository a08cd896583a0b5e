"""Merging adapters into their base: reading adapters, peft-exact math, streaming safetensors."""
