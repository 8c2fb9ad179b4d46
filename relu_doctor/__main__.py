"""`python -m relu_doctor` runs the CLI."""

from .cli import main

main()
