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


def rounded(value, spec: str = ".4g") -> str:
    """A number as a person reads it on a card or in a table: `spec` digits, `n/a` for None, NaN and infinities."""
    return number(value, spec, "n/a")


def duration(seconds: float) -> str:
    """Elapsed or remaining time: '42 s', '3 min 05 s', '1 h 02 min'."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def byte_size(count: float) -> str:
    """A size in bytes as people read it: '512 B', '3.1 MB', '26.2 GB' (powers of 1000, as `df -H`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:.3g} {unit}" if unit != "B" else f"{count:.0f} B"
        count /= 1000
    return f"{count:.3g} TB"
