"""LOOM-CFM reproducibility kit: the shared, typed library behind the notebooks."""

__version__ = "0.1.0"
