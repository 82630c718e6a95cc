"""The performance targets, measured side by side in one process (`bnlab bench`); never imported by training."""
