"""Ollama: names, the parameter table, Modelfiles, template families, rendering, the HTTP client,
deploying and health-checking a model."""
