"""What a run measures: probes (hooks), statistics (and their compiled loop), the TensorBoard writer, images."""
