"""Config: the typed schema and its checks, Hydra's composition errors restated, and the Typer -> Hydra launch."""
