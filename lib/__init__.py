"""LOOM-CFM reproducibility kit: the shared, typed library behind the notebooks (layers: lib/README.md)."""

from pathlib import Path

__version__ = "0.1.0"
REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: notebooks/, results/, data_prep/
