"""Numbers as people read them: the one place bnlab turns a value into text.

Plain functions without imports of the rest of bnlab, so the terminal, reports, verdicts, the run card and
the TensorBoard images all write a number the same way.
"""

from __future__ import annotations

import math


def number(value, spec: str = ".4g", missing: str = "-") -> str:
    """`value` formatted with `spec`, or `missing` for None, NaN and infinities."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def stat(value, spec: str = ".3g", runs: int | None = None) -> str:
    """A mean across seeds with its 95 % interval (a `bnlab.analysis.aggregate.Stat`): '0.705 ± 0.012',
    '3.2e-01 ×/÷ 1.5' (geometric), '0.705' (one seed), '-' (none); '(n=2)' when fewer than `runs` had one."""
    if value is None:
        return "-"
    text = format(value.mean, spec)
    if value.low is not None:
        text += f" ×/÷ {value.factor:.3g}" if value.geometric else f" ± {value.half_width:.2g}"
    return text + (f" (n={value.n})" if runs is not None and value.n < runs else "")


def byte_size(count: float) -> str:
    """A size in bytes as people read it: '512 B', '3.1 MB', '26.2 GB' (powers of 1000, as `df -H`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:.3g} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1000
    return f"{count:.3g} TB"
