"""One training run: the loop, checkpoints, Ctrl-C, summary.json, the run card and the progress bar."""
