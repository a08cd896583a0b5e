"""Merging adapters into their base: reading adapters and their config, peft-exact math,
streaming safetensors, and where the merged model may be written."""
