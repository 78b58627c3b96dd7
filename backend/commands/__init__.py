"""Subcommands of ``rerender`` owned by the backend: ``serve`` and ``bundle``."""
