"""Test helpers that are not fixtures: the Ollama test server, fake hubs, model builders."""
