#!/usr/bin/env bash
# Usage: tools/monailabel_env.sh DEST
#
# Builds a Python environment at DEST in which MONAI Label 0.8.5 serves volmae's bundles: torch, MONAI 1.6.1,
# MONAI Label 0.8.5 with the pins it needs to import (pydicom 2: its DICOM-SEG code needs it, and the newest
# dicomweb-client and pynetdicom need pydicom 3), and volmae from this repository (editable) with its core
# requirements, read from setup.cfg, but without the `dicom` extra (highdicom needs pydicom 3).
# Idempotent: when DEST already has a python that imports MONAI Label's inference code and volmae, nothing is done.
#
# torch is PyPI's own 2.13.0 build (`===`: exactly "2.13.0", not a local "+cpu" build a package mirror may offer):
# MONAI Label imports torchvision, whose PyPI wheels load only with PyPI's torch builds (with the CPU-only build,
# `import torchvision` fails: "operator torchvision::nms does not exist"). It runs on CPU-only machines too.
# Then: DEST/bin/monailabel start_server --app <app> ... (see a bundle's README, section MONAI Label).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$1"
PY="$DEST/bin/python"

CHECK="import monailabel, monailabel.tasks.infer.bundle, volmae"  # the second imports torchvision, as the server does
if [ -x "$PY" ] && "$PY" -c "$CHECK" 2>/dev/null; then
    echo "MONAI Label environment ready: $PY"
    exit 0
fi

"${PYTHON:-python3}" -m venv "$DEST"
"$PY" -m pip install -q "torch===2.13.0"
# volmae's core requirements (setup.cfg install_requires), resolved together with MONAI Label's pins; torch named
# again so that no dependency (sam2 -> torchvision) swaps it for another build
mapfile -t REQUIREMENTS < <("$PY" - "$REPO/setup.cfg" <<'EOF'
import configparser
import sys

cfg = configparser.ConfigParser()
cfg.read(sys.argv[1])
for line in cfg["options"]["install_requires"].splitlines():
    line = line.split("#")[0].strip()
    if line:
        print(line)
EOF
)
"$PY" -m pip install -q "torch===2.13.0" monai==1.6.1 monailabel==0.8.5 \
    "pydicom<3" "dicomweb-client<0.60" "pynetdicom<2.1" "${REQUIREMENTS[@]}"
"$PY" -m pip install -q --no-deps -e "$REPO"
"$PY" -c "$CHECK"
"$PY" -c "import pydicom; assert int(pydicom.__version__.split('.')[0]) < 3, pydicom.__version__"
echo "MONAI Label environment ready: $PY"
