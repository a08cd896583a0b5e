"""What deploykit knows about a model: its folder, its chat template, probes, its base."""
