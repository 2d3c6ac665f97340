"""qlass version (single source of truth for packaging and the DB)."""

__version__ = "0.1.0"
