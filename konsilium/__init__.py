"""Konsilium: a local, OpenAI-compatible inference gateway.

This package holds what every layer shares — the error tree, the configuration and the
command line — so that `gateway/`, `routing/` and `model_store/` never import each other
upwards.
"""

__version__ = "0.1.0"
