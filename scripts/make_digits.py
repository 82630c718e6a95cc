"""Produce bnlab/datasets/digits.csv.gz, the embedded 8x8 handwritten-digits data set.

Provenance: the file is copied byte for byte from scikit-learn's wheel
(sklearn/datasets/data/digits.csv.gz, shipped under the BSD-3-Clause licence of
scikit-learn). scikit-learn's copy is the test set of the UCI "Optical Recognition of
Handwritten Digits" data set (E. Alpaydin and C. Kaynak, 1998): 1797 rows, each 64
pixel counts in 0..16 (an 8x8 image, row-major) followed by the label 0..9. The UCI
repository itself now lists the original data under CC BY 4.0; cite Alpaydin & Kaynak (1998).

scikit-learn is NOT a dependency of bnlab: this script fetches its wheel into a
temporary folder with `pip download`, extracts the one file, checks it, and copies it.

    python scripts/make_digits.py            # fetch the wheel with pip
    python scripts/make_digits.py --wheel scikit_learn-*.whl   # or use a wheel you have
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MEMBER = "sklearn/datasets/data/digits.csv.gz"
# sha256 of the file as shipped in scikit-learn 1.9.1 (unchanged for many releases).
EXPECTED_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
TARGET = Path(__file__).resolve().parents[1] / "bnlab" / "datasets" / "digits.csv.gz"


def fetch_wheel(folder: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "scikit-learn", "-d", str(folder)],
        check=True,
    )
    return next(folder.glob("scikit_learn-*.whl"))


def check(payload: bytes) -> None:
    rows = gzip.decompress(payload).decode("ascii").strip().splitlines()
    assert len(rows) == 1797, f"expected 1797 rows, got {len(rows)}"
    for row in rows:
        values = [float(v) for v in row.split(",")]
        assert len(values) == 65, f"expected 64 pixels + 1 label per row, got {len(values)}"
        assert all(0 <= v <= 16 for v in values[:64]) and values[64] in range(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a scikit-learn wheel already on disk")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or fetch_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            payload = archive.read(MEMBER)
    check(payload)
    digest = hashlib.sha256(payload).hexdigest()
    if digest != EXPECTED_SHA256:
        print(f"note: sha256 {digest} differs from the recorded {EXPECTED_SHA256}; update both if intended")
    TARGET.write_bytes(payload)
    print(f"wrote {TARGET} ({len(payload)} bytes, sha256 {digest}) from {Path(wheel).name}")


if __name__ == "__main__":
    main()
