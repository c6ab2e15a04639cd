"""Experiments: the studies and ablations behind the notebooks, built on the algorithm layer (lib.couplings, ...)."""
