"""prefdata's version (the bottom layer: every module may read it, it imports nothing)."""

__version__ = "0.1.0"
