"""``python -m deploykit`` runs the CLI."""

from deploykit.cli.main import main

main()
