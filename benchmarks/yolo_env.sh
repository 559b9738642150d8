#!/usr/bin/env bash
# The benchmark-only environment for yolo_side_by_side.py: Ultralytics (AGPL-3.0, never part of the platform or
# the executor) beside the CPU torch wheel, with the torchvision stand-in in benchmarks/torchvision_standin.
# Usage: bash benchmarks/yolo_env.sh [VENV]   then run the command it prints.
set -euo pipefail
venv="${1:-.venv-yolo-bench}"
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --no-deps torch==2.13.0 ultralytics==8.4.190 ultralytics-thop \
  matplotlib opencv-python-headless pillow pyyaml requests psutil polars nvidia-ml-py onnx onnxruntime==1.32.0 \
  numpy==2.4.6 contourpy cycler fonttools kiwisolver pyparsing python-dateutil packaging six filelock sympy \
  networkx jinja2 fsspec typing-extensions mpmath markupsafe urllib3 idna charset-normalizer certifi protobuf \
  ml_dtypes flatbuffers
echo "YOLO_OFFLINE=1 PYTHONPATH=$here/torchvision_standin $venv/bin/python $here/yolo_side_by_side.py"
