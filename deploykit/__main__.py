"""``python -m deploykit`` runs the CLI."""

from .cli import main

main()
