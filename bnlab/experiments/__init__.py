"""The named experiments of `bnlab reproduce`: their claims, thresholds, verdicts and figures."""
