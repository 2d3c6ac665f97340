"""qlass: Q-guided stepwise search for language agents."""

from qlass._version import __version__

__all__ = ["__version__"]
