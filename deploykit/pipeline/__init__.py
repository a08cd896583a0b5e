"""ship: the plan of cached steps, the release bundle, doctor."""
