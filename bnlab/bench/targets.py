"""The performance targets, measured: telemetry cost, the loop against a plain script, the experience.

Every figure is a ratio of two things measured in the same process, interleaved repeat by repeat
(the order alternates), median of repeats: these machines are shared, so only side-by-side ratios
mean anything. Returns rows of numbers; the CLI and scripts print them.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TargetRow:
    group: str
    name: str
    figure: float
    unit: str
    target: str
    passed: bool
    detail: str = ""


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} | {os.cpu_count()} cores | torch {torch.__version__} | {torch.get_num_threads()} threads"


def interleaved(arms: dict[str, callable], repeats: int) -> dict[str, list[float]]:
    """Seconds of each arm per repeat, arms run one after another in alternating order."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            arms[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def _trainer(overrides: list[str], work: Path):
    """A callable that runs bnlab's real training function once in a fresh directory; returns its RunResult
    and the CPU time of this thread during the run."""
    from bnlab.config.launch import compose_config
    from bnlab.train.loop import train

    cfg = compose_config(overrides)
    counter = iter(range(10**6))

    def run():
        run_dir = work / f"run{next(counter)}"
        run_dir.mkdir(parents=True)
        images = None
        if cfg.log.enabled and cfg.log.images:
            from bnlab.telemetry.images import ImageLog

            images = ImageLog(cfg)
        cpu = time.thread_time()
        result = train(cfg, run_dir, overrides, images=images)
        cpu = time.thread_time() - cpu
        if result.status != "completed":
            raise RuntimeError(f"benchmark run ended {result.status}: {result.error}")
        return result, cpu

    return run


def _data_and_model(cfg):
    """The config's dataset and a freshly seeded model, built as bnlab's trainer builds them."""
    import torch

    from bnlab.data.datasets import load_dataset
    from bnlab.models.nets import build_model

    torch.manual_seed(cfg.train.seed)
    data = load_dataset(cfg.data.name, seed=cfg.train.seed, flatten=cfg.model.name == "mlp")
    return data, build_model(cfg.model, cfg.norm, data.input_shape, data.num_classes)


def side_cost_seconds(overrides: list[str], repeats: int = 200) -> float:
    """Median extra seconds a measured step costs outside telemetry's own calls: the probes' hooks in
    its forward and backward passes, and the two steps after it running slower on caches and memory
    the measurement has just used, or, where telemetry overlaps them (log.background with every step
    measured), beside the measurement's thread. From a measured step and the two after it against three
    unmeasured steps, alternating which comes first; the measurement itself is not timed."""
    import torch
    import torch.nn.functional as F

    from bnlab.config.launch import compose_config
    from bnlab.telemetry.probes import Probes
    from bnlab.train.loop import build_optimizer

    cfg = compose_config(overrides)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads or threads)
    data, model = _data_and_model(cfg)
    optimizer = build_optimizer(cfg.optim, model)
    x, y = data.x_train[:cfg.data.batch_size], data.y_train[:cfg.data.batch_size]
    probes, background = Probes(model), bool(cfg.log.background) and cfg.log.every == 1

    def step() -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    def measured() -> float:
        probes.start(histograms=True)
        seconds = step()
        # as telemetry measures (untimed), beside the next steps or before them
        pending = probes.capture(copy_weights=background).start_measuring(background)
        seconds += step() + step()
        pending.result()
        return seconds

    differences = []
    for repeat in range(repeats):
        if repeat % 2:
            plain = step() + step() + step()
            hooked = measured()
        else:
            hooked = measured()
            plain = step() + step() + step()
        differences.append(hooked - plain)
    torch.set_num_threads(threads)
    return max(statistics.median(differences), 0.0)


def bench_telemetry(steps: int = 1000, repeats: int = 5) -> list[TargetRow]:
    """Default telemetry and everything-every-step against telemetry off, on the default run.

    Two figures for each. The direct account: within each run, the wall time inside telemetry's own
    calls (measuring, writing, waiting for the last images), each measured step's side cost
    (`side_cost_seconds`: hooks, and the steps after it slowed by the measurement or beside its thread), and
    the time the training thread waited outside those calls (wall minus its CPU time: another process
    or thread holding its core or the GIL), each minus the off run's; the ratio run / (run - that)
    is immune to the machine's speed, which here swings by up to 2x for seconds at a time and moves
    whole runs. The end-to-end ratio of interleaved runs shows the same cost through that noise."""
    base = [f"train.steps={steps}"]
    configs = {"off": base + ["log.enabled=false"], "default": base,
               "every_step": base + ["log.every=1", "log.hist_every=1"]}
    results: dict[str, list] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as work:
        runs = {name: _trainer(overrides, Path(work) / name) for name, overrides in configs.items()}
        arms = {name: (lambda name=name: results[name].append(runs[name]())) for name in configs}
        times = interleaved(arms, repeats)
    per_step_ms = [t / steps * 1e3 for t in times["off"]]
    rows = []
    for name, label, target in (("default", "default log.every, histograms, images vs off", 0.05),
                                ("every_step", "every statistic at every step vs off", 0.50)):
        side = side_cost_seconds(configs[name])
        accounts = []
        for wall, off_wall, (result, cpu), (off, off_cpu) in zip(times[name], times["off"], results[name],
                                                                 results["off"], strict=True):
            waited = wall - cpu - (result.telemetry_seconds - result.telemetry_cpu_seconds)
            off_waited = off_wall - off_cpu - (off.telemetry_seconds - off.telemetry_cpu_seconds)
            extra = (result.telemetry_seconds - off.telemetry_seconds + result.measured_steps * side
                     + waited - off_waited)
            accounts.append(wall / (wall - extra))
        account, end_to_end = statistics.median(accounts), median_ratio(times[name], times["off"])
        rows.append(TargetRow(
            "telemetry", label, (account - 1) * 100, "% more", f"<= {target:.0%}", account <= 1 + target,
            f"direct account, median of {repeats}; end to end {(end_to_end - 1) * 100:+.1f} % (interleaved runs); "
            f"telemetry off {min(per_step_ms):.2f}-{max(per_step_ms):.2f} ms/step across repeats; "
            f"side cost {side * 1e3:.2f} ms a measured step"))
    return rows


def _plain_script(overrides: list[str], steps: int):
    """The usual hand-written PyTorch loop: DataLoader over a TensorDataset, same model and optimizer."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from bnlab.config.launch import compose_config

    cfg = compose_config(overrides)

    def run() -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(cfg.train.threads or threads)  # the same threads as bnlab's trainer uses
        data, model = _data_and_model(cfg)
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
        loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=cfg.data.batch_size,
                            shuffle=True, drop_last=True)
        step = 0
        while step < steps:
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step == steps:
                    break
        torch.set_num_threads(threads)

    return run


def bench_loop(steps: int = 500, repeats: int = 5) -> list[TargetRow]:
    rows = []
    for label, overrides in (("default MLP", []), ("CNN", ["model=cnn"])):
        overrides = overrides + [f"train.steps={steps}"]
        with tempfile.TemporaryDirectory() as work:
            arms = {"plain": _plain_script(overrides, steps),
                    "bnlab": _trainer(overrides + ["log.enabled=false"], Path(work))}
            times = interleaved(arms, repeats)
        ratio = median_ratio(times["plain"], times["bnlab"])
        rows.append(TargetRow("loop", f"{label}: plain DataLoader script time / bnlab trainer time", ratio, "x",
                              ">= 1.0", ratio >= 1.0,
                              f"bnlab {statistics.median(times['bnlab']) / steps * 1e3:.2f} ms/step, "
                              f"plain {statistics.median(times['plain']) / steps * 1e3:.2f} ms/step"))
    return rows


def _wall(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def bench_experience(reproduce: bool = True) -> list[TargetRow]:
    """Start-up of `bnlab --help`, the default `bnlab train`, and `bnlab reproduce vanishing` (full size)."""
    bnlab = str(Path(sys.executable).parent / "bnlab")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        helps = [_wall([bnlab, "--help"], work) for _ in range(5)]
        rows.append(TargetRow("experience", "bnlab --help", statistics.median(helps), "s", "< 1 s",
                              statistics.median(helps) < 1.0, "median of 5"))
        seconds = _wall([bnlab, "train"], work)
        rows.append(TargetRow("experience", "bnlab train (default, start-up included)", seconds, "s", "< 30 s",
                              seconds < 30))
        if reproduce:
            seconds = _wall([bnlab, "reproduce", "vanishing"], work)
            rows.append(TargetRow("experience", "bnlab reproduce vanishing (full size)", seconds, "s", "< 120 s",
                                  seconds < 120))
    return rows


def bench_bn_rows(repeats: int = 7) -> list[TargetRow]:
    from bnlab.bench.batchnorm import TARGET_GEOMEAN, TARGET_PEAK_RATIO, TARGET_WORST, bench_bn

    report = bench_bn(repeats=repeats)
    rows = [TargetRow("bn", f"{row.layer} {'x'.join(map(str, row.shape))}: bnlab / torch time", row.ratio, "x",
                      f"<= {TARGET_WORST}", row.ratio <= TARGET_WORST,
                      f"torch {row.torch_ms:.3f} ms, bnlab {row.bnlab_ms:.3f} ms, peak memory ratio "
                      f"{row.peak_ratio:.2f}" + (" (noisy)" if row.noisy else ""))
            for row in report.rows]
    rows.append(TargetRow("bn", "geometric mean of time ratios", report.geomean_ratio, "x",
                          f"<= {TARGET_GEOMEAN}", report.geomean_ratio <= TARGET_GEOMEAN))
    rows.append(TargetRow("bn", "worst peak-memory ratio (bnlab / torch)", report.worst_peak_ratio, "x",
                          f"<= {TARGET_PEAK_RATIO}", report.worst_peak_ratio <= TARGET_PEAK_RATIO))
    return rows


BENCHES = {"bn": bench_bn_rows, "telemetry": bench_telemetry, "loop": bench_loop, "experience": bench_experience}
