"""Hydra configs shipped with the package (this folder installs as `bnlab.conf`)."""
