"""Signal-propagation statistics (Brock, De & Smith 2021, "Characterizing signal propagation to close the
performance gap in unnormalized ResNets", Section 3), per block, on one batch.

For the output h of block i (after the skip connection is added, for residual blocks), with channels
along dimension 1 and the statistics of a channel taken over the batch (and the spatial positions of a
convolution), biased:

- signal_prop/mean_sq/layerNN  = mean over channels of (mean of the channel)^2  ("average channel
  squared mean": how far the signal has drifted from zero mean);
- signal_prop/var/layerNN      = mean over channels of var(channel)  ("average channel variance");
- signal_prop/residual_var/layerNN, residual blocks only (model.residual=true): the average channel
  variance of the residual branch f(x) before the skip is added, computed as h - x.

The forward pass runs on a copy of the model in training mode (BatchNorm with the batch's statistics,
as the step itself) on the step's batch of real data, without gradients. `bnlab.telemetry.signal_figure`
draws the three profiles against depth, as the paper's plots do.
"""

from __future__ import annotations

import torch
from torch import nn

from bnlab.telemetry.passes import replica

MEAN_SQ, VAR, RESIDUAL_VAR = "signal_prop/mean_sq", "signal_prop/var", "signal_prop/residual_var"
FAMILIES = (MEAN_SQ, VAR, RESIDUAL_VAR)


def channel_statistics(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(average channel squared mean, average channel variance) of h, (N, C) or (N, C, H, W), in float64."""
    dims = [d for d in range(h.dim()) if d != 1]
    h = h.double()
    mean = h.mean(dim=dims)  # (C,)
    var = h.var(dim=dims, unbiased=False)  # (C,)
    return (mean ** 2).mean(), var.mean()


@torch.no_grad()
def signal_propagation(model: nn.Module, x: torch.Tensor, twin: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """{tag: 0-d float64 tensor} of the three families for every block of `model`'s forward pass on x.

    `twin`: a copy of the model to work on (`passes.Twin.synced()`), else a fresh `replica`."""
    twin = replica(model) if twin is None else twin
    records: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [block.register_forward_hook(lambda module, inputs, output: records.append((inputs[0], output)))
               for block in twin.blocks]
    try:
        twin(x)
    finally:
        for handle in handles:
            handle.remove()
    values = {}
    for (name, _), block, (block_input, output) in zip(twin.weight_layers.items(), twin.blocks, records,
                                                      strict=False):
        values[f"{MEAN_SQ}/{name}"], values[f"{VAR}/{name}"] = channel_statistics(output)
        if getattr(block, "residual", False):
            values[f"{RESIDUAL_VAR}/{name}"] = channel_statistics(output.double() - block_input.double())[1]
    return values


def profiles(values: dict[str, float]) -> dict[str, tuple[list[int], list[float]]]:
    """{family: (block indices, values)}, first block first, from one step's tags (e.g. read back from a
    run's event files); a family without tags has empty lists, and residual_var skips the blocks that have
    no skip connection (the first block of a model whose input width differs from model.width)."""
    result = {}
    for family in FAMILIES:
        prefix = family + "/layer"
        indices = sorted(int(tag[len(prefix):]) for tag in values if tag.startswith(prefix))
        result[family] = (indices, [values[f"{prefix}{index:02d}"] for index in indices])
    return result
