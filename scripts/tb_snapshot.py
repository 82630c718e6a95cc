"""Screenshots of TensorBoard's Images, Custom Scalars and HParams views of a runs folder.

Usage: .venv/bin/python scripts/tb_snapshot.py RUNS_DIR [--out docs/images] [--wait-ms 20000]
                                                [--views images custom_scalars hparams] [--image-filter REGEX]
                                                [--scale 1] [--prefix tensorboard]

Starts TensorBoard on RUNS_DIR at a free port on 127.0.0.1 (bnlab.analysis.tensorboard), opens each view
in headless Chromium (Debian's `chromium` package), writes <prefix>_<view>.png to
--out, and stops TensorBoard. Exit code 2 when Chromium is not installed.

The README's screenshots come from the default pair (`make pair`: runs/train), a 2x2 sweep
(`bnlab train -m norm=none,bnlab train.seed=0,1 train.steps=200 log.every=10`) and its report's seed bands
(`bnlab report SWEEP`, then this script on SWEEP/seed_bands with --views custom_scalars).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from bnlab.analysis.tensorboard import start_tensorboard, stop
from bnlab.errors import BnlabError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Quiet, reproducible headless Chromium: no sandbox (root in a container), no GPU, no background traffic.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--hide-scrollbars", "--window-size=1400,1000"]
# TensorBoard's dashboards are named in the URL fragment (#images, #custom_scalars, #hparams), and some of
# their settings follow it (&tagFilter=REGEX); the query darkMode=false keeps the screenshots light.
VIEWS = ("images", "custom_scalars", "hparams", "text")


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def screenshot(chromium: str, url: str, path: Path, wait_ms: int, scale: float = 1.0) -> None:
    """One page to PNG; virtual time lets the page's requests and rendering finish before the shot."""
    with tempfile.TemporaryDirectory(prefix="bnlab-chromium-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--force-device-scale-factor={scale}",
                   f"--virtual-time-budget={wait_ms}", f"--screenshot={path}", url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120 + wait_ms / 1000)
    if done.returncode != 0 or not path.is_file():
        raise BnlabError(f"chromium could not take {url} (exit code {done.returncode}): "
                         f"{done.stderr.strip()[-500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="a runs folder, sweep or run directory")
    parser.add_argument("--out", type=Path, default=Path("docs/images"), help="where the PNGs go")
    parser.add_argument("--views", nargs="+", default=list(VIEWS[:3]), choices=VIEWS)
    parser.add_argument("--wait-ms", type=int, default=20000, help="virtual time each page gets to render")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="device pixels per CSS pixel: 2 shows TensorBoard's half-size images at full size")
    parser.add_argument("--prefix", default="tensorboard", help="the PNGs' names: PREFIX_VIEW.png")
    parser.add_argument("--image-filter", default="gradients",
                        help="tag regex for the Images view: matching images come first ('' for none)")
    args = parser.parse_args()

    chromium = find_chromium()
    if chromium is None:
        print("error: headless Chromium is needed for screenshots and was not found "
              f"(looked for {', '.join(CHROMIUM_NAMES)}); install it with: "
              "apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        server = start_tensorboard(args.runs, port=0)
    except BnlabError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        for view in args.views:
            path = args.out.resolve() / f"{args.prefix}_{view}.png"
            fragment = view
            if view == "images" and args.image_filter:
                fragment += "&tagFilter=" + urllib.parse.quote(args.image_filter, safe="")
            screenshot(chromium, f"{server.url}?darkMode=false#{fragment}", path, args.wait_ms, args.scale)
            print(f"wrote {path}")
    except (BnlabError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
