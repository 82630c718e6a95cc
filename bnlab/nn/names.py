"""The names of the norm layers and the config keys each one reads, declared once and without torch.

The config schema validates `norm.name` against NORM_NAMES at the command line's start, before torch is
imported (bnlab.nn's __init__ loads its layers lazily); the registry maps the same names to layer classes
and refuses to import if the two disagree.
"""

NORM_NAMES = ("none", "bnlab", "torch", "ghost", "renorm", "noisy", "layer", "group", "torch_layer",
              "torch_group")

# The layers that normalize with statistics of the batch in training: each channel needs more than one
# value in a batch, and a bias in the weight layer before them would be cancelled.
BATCH_NORMS = ("bnlab", "torch", "ghost", "renorm", "noisy")

# name -> the `norm.*` config keys its constructor takes as keywords of the same name.
NORM_OPTIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "bnlab": ("eps", "momentum"),
    "torch": ("eps", "momentum"),
    "ghost": ("eps", "momentum", "ghost_batch_size"),
    "renorm": ("eps", "momentum", "rmax", "dmax", "warmup_steps", "rmax_step", "dmax_step"),
    "noisy": ("eps", "momentum", "noise_mean", "noise_std"),
    "layer": ("eps",),
    "group": ("eps", "groups"),
    "torch_layer": ("eps",),
    "torch_group": ("eps", "groups"),
}
