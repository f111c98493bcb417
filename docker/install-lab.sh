#!/bin/sh
# The lab's Python side into the current Python (no server, no extension):
# the notebooks' dependencies of binder/requirements.txt (CPU torch,
# transformers) and pg_llm_lab itself, editable, from the repository root.
# Used by the Dockerfile's `lab` target and by .ci/binder (which points
# LAB_REQUIREMENTS at a copy without the unreachable PyTorch index).
#
#   docker/install-lab.sh            # from the repository root
set -eu
cd "$(dirname "$0")/.."
python3 -m pip install -r "${LAB_REQUIREMENTS:-binder/requirements.txt}"
python3 -m pip install -e .
