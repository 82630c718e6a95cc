"""Deep MLPs and plain CNNs built from config, with the norm layer the config names."""
