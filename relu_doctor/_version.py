"""The package version, kept torch-free so `--version` stays instant."""

__version__ = "0.1.0"
