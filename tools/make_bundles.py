"""Regenerate ``volmae/bundles/<task>/`` (configs, metadata, README, data licence, LICENSE, large_files.yml, top-level
links) from volmae/bundle/specs.py.

python tools/make_bundles.py            # rewrite volmae/bundles/hippocampus, btcv, brats
python tools/make_bundles.py --check    # exit 1 when a committed bundle file differs from what the specs give
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from volmae.bundle.make import LINKED, bundle_files, write_all
from volmae.bundle.specs import BUNDLES

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "volmae" / "bundles"
LICENSE = BUNDLES_DIR / "schema" / "APACHE-2.0.txt"


def stale(bundles_dir: Path) -> list[str]:
    """Files (relative to ``bundles_dir``) whose content or link differs from the specs."""
    text = LICENSE.read_text()
    out = []
    for spec in BUNDLES.values():
        root = bundles_dir / spec.name
        out += [
            f"{spec.name}/{rel}"
            for rel, body in bundle_files(spec, text).items()
            if not (root / rel).is_file() or (root / rel).read_text() != body
        ]
        out += [
            f"{spec.name}/{n}"
            for n in LINKED
            if not (root / n).is_symlink() or (root / n).readlink() != Path("configs") / n
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale files")
    ap.add_argument("--bundles-dir", default=str(BUNDLES_DIR))
    args = ap.parse_args(argv)
    bundles_dir = Path(args.bundles_dir)
    if args.check:
        bad = stale(bundles_dir)
        for b in bad:
            print(f"stale: {b}")
        return 1 if bad else 0
    for p in write_all(bundles_dir, LICENSE.read_text()):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
