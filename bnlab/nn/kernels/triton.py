"""BatchNorm's training-mode forward and backward as Triton GPU kernels: the same math as functional.py.

functional.forward_kernel / backward_kernel (plain PyTorch) stay the reference; on a CUDA tensor they
hand over to these when Triton is installed (set BNLAB_TRITON=0 to keep the PyTorch path). Each
direction is two launches and touches full-size memory the fewest times a two-pass BatchNorm can:

  forward:  1. per (channel block, row split): mean and M2 of x - x[0, c, 0] (Chan et al.'s
               parallel update, one tile at a time: exact like two passes, but one read of x;
               the shift by a value of the channel keeps float32 exact when |mean| >> std)
            2. merge the splits' partials, write mean/var/invstd/scale, then y = x * scale + shift
  backward: 3. per (channel block, row split): sum(dy) and sum(dy * (x - mean))
            4. merge, write grad_weight/grad_bias, then dx = dy * scale + (x - mean) * k + c

so x is read twice and y written once (3 tensor passes), dy and x read twice and dx written once (5).

Any input is seen as a strided (R, C, S) array: (N, C, H*W) for channels-first tensors, (N*H*W, C, 1)
for channels-last ones and (N, C, 1) for 2-D ones. Tiles are (BLOCK_R, BLOCK_C, BLOCK_S), with the
contiguous dim (S, or C when S == 1) innermost, so loads are coalesced in every layout.
"""

import contextlib
import functools
import os
import struct

import torch
from torch import Tensor

from bnlab.nn import functional

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: functional.py then never calls into this module
    triton = None

ENABLED = os.environ.get("BNLAB_TRITON", "1") != "0"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
TILE = 4096  # elements per tile (half for float64): 32 per thread of the default 4 warps
MAX_BLOCK_S = 1024
PROGRAMS_PER_SM = 4
NUM_WARPS = 4
MERGE_TILE = 2048  # partials loaded at once by the apply kernels: (splits, channels)


def supports(x: Tensor) -> bool:
    """Whether the Triton kernels take this input: a non-empty floating CUDA tensor under 2^31 elements."""
    return (ENABLED and triton is not None and x.is_cuda and x.dtype in _DTYPES
            and 0 < x.numel() < 2**31)


if triton is not None:

    @triton.jit
    def _tile(r_end, rs, ss, c, cmask, S, sR, sC, sS,
              BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
        """Offsets and mask of the tile whose first row is rs and first spatial index ss."""
        r = rs + tl.arange(0, BLOCK_R)
        s = ss + tl.arange(0, BLOCK_S)
        offs = r[:, None, None] * sR + c[None, :, None] * sC + s[None, None, :] * sS
        mask = (r < r_end)[:, None, None] & cmask[None, :, None] & (s < S)[None, None, :]
        return offs, mask

    @triton.jit
    def _program(C, R, tiles_per_split, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """This program's split, channels (and their mask) and rows [r0, r_end)."""
        split = tl.program_id(1)
        c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        r0 = split * tiles_per_split * BLOCK_R
        return split, c, c < C, r0, tl.minimum(r0 + tiles_per_split * BLOCK_R, R)

    @triton.jit
    def _chan(n1, mean1, m2_1, n2, mean2, m2_2):
        """Chan et al.'s merge of two (count, mean, M2) summaries; a count of 0 contributes nothing."""
        n = n1 + n2
        w = n2 / tl.maximum(n, 1.0)
        delta = mean2 - mean1
        return n, mean1 + delta * w, m2_1 + m2_2 + delta * delta * n1 * w

    @triton.jit
    def _split_counts(k, R, S, tiles_per_split, BLOCK_R: tl.constexpr):
        """Values a channel in split k (0 for k past the last split)."""
        start = k * tiles_per_split * BLOCK_R
        return tl.maximum(tl.minimum(R, start + tiles_per_split * BLOCK_R) - start, 0) * S

    @triton.jit
    def _forward_stats(x_ptr, pmean_ptr, pm2_ptr, R, C, S, sR, sC, sS, tiles_per_split,
                       ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
        """Mean and M2 (sum of squared deviations) of each channel over one split's rows."""
        split, c, cmask, r0, r_end = _program(C, R, tiles_per_split, BLOCK_R, BLOCK_C)
        shift = tl.load(x_ptr + c * sC, mask=cmask, other=0.0).to(ACC)  # x[0, c, 0]: see the module docstring
        mean = tl.zeros([BLOCK_C], ACC)
        m2 = tl.zeros([BLOCK_C], ACC)
        for t in range(0, tiles_per_split):  # the same bound in every program
            rs = r0 + t * BLOCK_R
            rows = tl.maximum(tl.minimum(r_end - rs, BLOCK_R), 0)  # 0 past the end of the last split
            for ss in range(0, S, BLOCK_S):
                offs, mask = _tile(r_end, rs, ss, c, cmask, S, sR, sC, sS, BLOCK_R, BLOCK_S)
                v = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC) - shift[None, :, None], 0.0)
                n_tile = (rows * tl.minimum(S - ss, BLOCK_S)).to(ACC)
                n_before = ((rs - r0) * S + ss * rows).to(ACC)  # values merged so far
                tile_mean = tl.sum(tl.sum(v, axis=2), axis=0) / tl.maximum(n_tile, 1.0)
                d = tl.where(mask, v - tile_mean[None, :, None], 0.0)
                tile_m2 = tl.sum(tl.sum(d * d, axis=2), axis=0)
                _, mean, m2 = _chan(n_before, mean, m2, n_tile, tile_mean, tile_m2)
        tl.store(pmean_ptr + split * C + c, mean, mask=cmask)
        tl.store(pm2_ptr + split * C + c, m2, mask=cmask)

    @triton.jit
    def _merge(n, mean, m2, axis: tl.constexpr):
        """Chan's merge of many (count, mean, M2) summaries along an axis, written with sums (two passes)."""
        total = tl.sum(n, axis=axis)
        merged_mean = tl.sum(n * mean, axis=axis) / tl.maximum(total, 1.0)
        d = mean - tl.expand_dims(merged_mean, axis)
        return total, merged_mean, tl.sum(m2 + n * d * d, axis=axis)

    @triton.jit
    def _forward_apply(x_ptr, y_ptr, pmean_ptr, pm2_ptr, w_ptr, b_ptr, mean_ptr, var_ptr, invstd_ptr, scale_ptr,
                       R, C, S, sR, sC, sS, tiles_per_split, num_splits, eps_hi, eps_lo,
                       ACC: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr):
        """Merge the splits' statistics, store them (split 0), then y = x * scale + shift over this split."""
        split, c, cmask, r0, r_end = _program(C, R, tiles_per_split, BLOCK_R, BLOCK_C)
        count = tl.zeros([BLOCK_C], ACC)
        mean = tl.zeros([BLOCK_C], ACC)
        m2 = tl.zeros([BLOCK_C], ACC)
        for p0 in range(0, num_splits, BLOCK_P):  # BLOCK_P splits at a time
            p = p0 + tl.arange(0, BLOCK_P)
            pmask = (p < num_splits)[:, None] & cmask[None, :]
            offs = p[:, None] * C + c[None, :]
            n_p = tl.where(pmask, _split_counts(p, R, S, tiles_per_split, BLOCK_R)[:, None], 0).to(ACC)
            chunk = _merge(n_p, tl.load(pmean_ptr + offs, mask=pmask, other=0.0),
                           tl.load(pm2_ptr + offs, mask=pmask, other=0.0), 0)
            count, mean, m2 = _chan(count, mean, m2, chunk[0], chunk[1], chunk[2])
        mean += tl.load(x_ptr + c * sC, mask=cmask, other=0.0).to(ACC)  # undo the shift by x[0, c, 0]
        var = m2 / (tl.zeros([BLOCK_C], ACC) + R * S)  # biased (R * S may be a compile-time 1)
        # eps arrives as two float32 halves so that float64 gets it to the last digit.
        if ACC == tl.float64:  # noqa: SIM300 (ACC is a compile-time dtype)  float64 sqrt and division round correctly already
            invstd = 1.0 / tl.sqrt(var + eps_hi + eps_lo)
        else:  # float32's default sqrt and division are approximate; ask for the correctly rounded ones
            invstd = tl.div_rn(tl.full([BLOCK_C], 1.0, ACC), tl.sqrt_rn(var + eps_hi + eps_lo))
        scale = invstd
        if HAS_WEIGHT:
            scale = tl.load(w_ptr + c, mask=cmask, other=1.0).to(ACC) * invstd
        shift = -mean * scale
        if HAS_BIAS:
            shift += tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
        if split == 0:
            tl.store(mean_ptr + c, mean, mask=cmask)
            tl.store(var_ptr + c, var, mask=cmask)
            tl.store(invstd_ptr + c, invstd, mask=cmask)
            tl.store(scale_ptr + c, scale, mask=cmask)

        for t in range(0, tiles_per_split):  # the same bound in every program
            rs = r0 + t * BLOCK_R
            for ss in range(0, S, BLOCK_S):
                offs, mask = _tile(r_end, rs, ss, c, cmask, S, sR, sC, sS, BLOCK_R, BLOCK_S)
                v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
                y = v * scale[None, :, None] + shift[None, :, None]
                tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_sums(dy_ptr, x_ptr, mean_ptr, pdy_ptr, pdyx_ptr, R, C, S, sR, sC, sS, tiles_per_split,
                       ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
        """sum(dy) and sum(dy * (x - mean)) of each channel over one split's rows."""
        split, c, cmask, r0, r_end = _program(C, R, tiles_per_split, BLOCK_R, BLOCK_C)
        mean = tl.load(mean_ptr + c, mask=cmask, other=0.0)
        sum_dy = tl.zeros([BLOCK_C], ACC)
        sum_dyx = tl.zeros([BLOCK_C], ACC)
        for t in range(0, tiles_per_split):  # the same bound in every program
            rs = r0 + t * BLOCK_R
            for ss in range(0, S, BLOCK_S):
                offs, mask = _tile(r_end, rs, ss, c, cmask, S, sR, sC, sS, BLOCK_R, BLOCK_S)
                dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC)
                xc = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC) - mean[None, :, None], 0.0)
                sum_dy += tl.sum(tl.sum(dy, axis=2), axis=0)
                sum_dyx += tl.sum(tl.sum(dy * xc, axis=2), axis=0)
        tl.store(pdy_ptr + split * C + c, sum_dy, mask=cmask)
        tl.store(pdyx_ptr + split * C + c, sum_dyx, mask=cmask)

    @triton.jit
    def _backward_apply(dy_ptr, x_ptr, dx_ptr, mean_ptr, invstd_ptr, scale_ptr, pdy_ptr, pdyx_ptr, gw_ptr, gb_ptr,
                        R, C, S, sR, sC, sS, tiles_per_split, num_splits,
                        ACC: tl.constexpr, NEED_DX: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr):
        """Merge the sums, store grad_weight/grad_bias (split 0), then dx over this split.

        With x_hat = (x - mean) * invstd and M values a channel,
        dx = scale * (dy - sum(dy) / M - x_hat * sum(dy * x_hat) / M).
        """
        split, c, cmask, r0, r_end = _program(C, R, tiles_per_split, BLOCK_R, BLOCK_C)
        sum_dy = tl.zeros([BLOCK_C], ACC)
        sum_dyx = tl.zeros([BLOCK_C], ACC)
        for p0 in range(0, num_splits, BLOCK_P):  # BLOCK_P splits at a time
            p = p0 + tl.arange(0, BLOCK_P)
            pmask = (p < num_splits)[:, None] & cmask[None, :]
            offs = p[:, None] * C + c[None, :]
            sum_dy += tl.sum(tl.load(pdy_ptr + offs, mask=pmask, other=0.0), axis=0)
            sum_dyx += tl.sum(tl.load(pdyx_ptr + offs, mask=pmask, other=0.0), axis=0)
        invstd = tl.load(invstd_ptr + c, mask=cmask, other=0.0)
        grad_weight = sum_dyx * invstd  # sum(dy * x_hat)
        if split == 0:
            tl.store(gw_ptr + c, grad_weight, mask=cmask)
            tl.store(gb_ptr + c, sum_dy, mask=cmask)
        if NEED_DX:
            mean = tl.load(mean_ptr + c, mask=cmask, other=0.0)
            scale = tl.load(scale_ptr + c, mask=cmask, other=0.0)
            count = tl.zeros([BLOCK_C], ACC) + R * S
            k_x = -scale * invstd * grad_weight / count  # multiplies (x - mean)
            k_c = -scale * sum_dy / count
            for t in range(0, tiles_per_split):  # the same bound in every program
                rs = r0 + t * BLOCK_R
                for ss in range(0, S, BLOCK_S):
                    offs, mask = _tile(r_end, rs, ss, c, cmask, S, sR, sC, sS, BLOCK_R, BLOCK_S)
                    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC)
                    xc = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC) - mean[None, :, None]
                    dx = dy * scale[None, :, None] + xc * k_x[None, :, None] + k_c[None, :, None]
                    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _layout(x: Tensor):
    """x as a strided (R, C, S) array: x itself (made dense if it is neither layout) and (R, C, S, sR, sC, sS)."""
    n, c = x.shape[0], x.shape[1]
    if x.dim() == 2:
        if not (x.is_contiguous() or x.t().is_contiguous()):  # y = empty_like(x) must share x's strides
            x = x.contiguous()
        return x, (n, c, 1, x.stride(0), x.stride(1), 1)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x, (x.numel() // c, c, 1, c, 1, 1)
    x = x.contiguous()
    s = x.numel() // (n * c)
    return x, (n, c, s, c * s, s, 1)


def _blocks(shape, element_size: int, device: torch.device):
    """Tile shape (BLOCK_R, BLOCK_C, BLOCK_S) and the row split: (blocks, row tiles a split, grid)."""
    return _plan(shape[:3], element_size, device, TILE, MAX_BLOCK_S, PROGRAMS_PER_SM)


@functools.lru_cache(maxsize=1024)  # a layer sees few shapes; planning costs more host time than the launch
def _plan(shape, element_size: int, device: torch.device, tile: int, max_block_s: int, programs_per_sm: int):
    r, c, s = shape
    tile = tile if element_size <= 4 else tile // 2
    if s == 1:  # channels innermost
        block_c = min(triton.next_power_of_2(c), 128)
        block_s = 1
    else:
        block_c = 1
        block_s = _spatial_block(s, max_block_s)
    block_r = max(1, tile // (block_c * block_s))
    block_r = min(block_r, triton.next_power_of_2(r))
    channel_blocks = triton.cdiv(c, block_c)
    row_tiles = triton.cdiv(r, block_r)
    target = programs_per_sm * _multiprocessors(device)
    splits = max(1, min(row_tiles, triton.cdiv(target, channel_blocks)))
    tiles_per_split = triton.cdiv(row_tiles, splits)
    splits = triton.cdiv(row_tiles, tiles_per_split)
    return (block_r, block_c, block_s), tiles_per_split, (channel_blocks, splits)


def _spatial_block(s: int, max_block_s: int) -> int:
    """BLOCK_S: the largest power of two (32 to MAX_BLOCK_S) that pads S by at most 1/16 (56*56 -> 256),
    else the power of two just above S (7*7 -> 64; shorter rows would cost coalescing)."""
    def padding(block):
        return triton.cdiv(s, block) * block - s

    largest = block = min(triton.next_power_of_2(s), max_block_s)
    while block > 32 and padding(block) > s // 16:
        block //= 2
    return block if padding(block) <= s // 16 else largest


def _merge_block(splits: int, block_c: int) -> int:
    """How many splits' partials the apply kernels load and merge at once: a [BLOCK_P, BLOCK_C] tile."""
    return min(triton.next_power_of_2(splits), max(1, MERGE_TILE // block_c))


_SMS: dict = {}


def _multiprocessors(device: torch.device) -> int:
    """The device's multiprocessor count (4 for a CPU tensor in Triton's interpreter)."""
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return _SMS[device]


def _acc(x: Tensor):
    """The compute dtype, as functional.py chooses it (float32 for half precision), for Triton and torch."""
    dtype = functional._compute_dtype(x)
    return (tl.float64 if dtype == torch.float64 else tl.float32), dtype


def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """As functional.forward_kernel: (y, mean, var, invstd, scale), var biased, per-channel tensors in float32/64."""
    with _on(x.device):
        return _forward(x, weight, bias, eps)


def backward(dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, need_dx: bool):
    """As functional.backward_kernel: (dx or None, grad_weight, grad_bias), per-channel ones in float32/64."""
    with _on(x.device):
        return _backward(dy, x, mean, invstd, scale, need_dx)


def _on(device: torch.device):
    """Launch on the tensor's GPU, not the current one (Triton launches on the current device)."""
    if device.type != "cuda" or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    x, shape = _layout(x)
    (block_r, block_c, block_s), tiles_per_split, grid = _blocks(shape, x.element_size(), x.device)
    acc, acc_dtype = _acc(x)
    c = shape[1]
    pmean = torch.empty(grid[1], c, device=x.device, dtype=acc_dtype)
    pm2 = torch.empty_like(pmean)
    stats = torch.empty(4, c, device=x.device, dtype=acc_dtype)  # mean, var, invstd, scale
    y = torch.empty_like(x)
    blocks = {"BLOCK_R": block_r, "BLOCK_C": block_c, "BLOCK_S": block_s}
    _forward_stats[grid](x, pmean, pm2, *shape, tiles_per_split, ACC=acc, num_warps=NUM_WARPS, **blocks)
    blocks["BLOCK_P"] = _merge_block(grid[1], block_c)
    eps_hi = struct.unpack("f", struct.pack("f", eps))[0]  # eps rounded to float32
    _forward_apply[grid](x, y, pmean, pm2, weight, bias, stats[0], stats[1], stats[2], stats[3],
                         *shape, tiles_per_split, grid[1], eps_hi, eps - eps_hi,
                         ACC=acc, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                         num_warps=NUM_WARPS, **blocks)
    return y, stats[0], stats[1], stats[2], stats[3]


def _backward(dy: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor, need_dx: bool):
    x, shape = _layout(x)
    if dy.stride() != x.stride():  # the kernels index dy with x's strides
        dy = torch.empty_like(x).copy_(dy)
    (block_r, block_c, block_s), tiles_per_split, grid = _blocks(shape, x.element_size(), x.device)
    acc, acc_dtype = _acc(x)
    c = shape[1]
    pdy = torch.empty(grid[1], c, device=x.device, dtype=acc_dtype)
    pdyx = torch.empty_like(pdy)
    grads = torch.empty(2, c, device=x.device, dtype=acc_dtype)  # grad_weight, grad_bias
    dx = torch.empty_like(x) if need_dx else None
    blocks = {"BLOCK_R": block_r, "BLOCK_C": block_c, "BLOCK_S": block_s}
    _backward_sums[grid](dy, x, mean, pdy, pdyx, *shape, tiles_per_split, ACC=acc, num_warps=NUM_WARPS, **blocks)
    blocks["BLOCK_P"] = _merge_block(grid[1], block_c)
    _backward_apply[grid if need_dx else (grid[0], 1)](
        dy, x, dx, mean, invstd, scale, pdy, pdyx, grads[0], grads[1], *shape, tiles_per_split, grid[1],
        ACC=acc, NEED_DX=need_dx, num_warps=NUM_WARPS, **blocks)
    return dx, grads[0], grads[1]
