"""The engine: torch-side observation (private). Nothing here imports analysis, api or anything above."""
