"""The distribution version, shared by both import packages (asymgrpo re-exports it)."""

__version__ = "0.6.0"
