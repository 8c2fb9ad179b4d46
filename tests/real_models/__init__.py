"""Real architectures, ported from public open-source model code, for the truth-on-real-models tests (issue 11).

Each module says its source and licence in its header. Weights are random or planted here (no download); sizes
are cut down for CI where the original is large, and every cut is named in the module's docstring.
"""
