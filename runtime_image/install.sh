#!/bin/sh
# Installs the tenant runtime into a new virtualenv, every package pinned by constraints.txt.
# The one way it is installed: runtime_image/Dockerfile runs this script, and so does
# tests/runtime/test_image_install.py, so the test installs exactly what the image holds.
#
# usage: install.sh VENV [SOURCE]    SOURCE is the repository root (default: .)
# env:   PYTHON (default python3); pip's own PIP_* settings (the image sets PIP_NO_CACHE_DIR)
set -eu

venv=$1
source_dir=$(cd "${2:-.}" && pwd)
pins="$source_dir/runtime_image/constraints.txt"

"${PYTHON:-python3}" -m venv "$venv"
# First the pinned pip: it knows --build-constraint, which pins the project's build backend.
"$venv/bin/python" -m pip install --constraint "$pins" pip
"$venv/bin/python" -m pip install --constraint "$pins" --build-constraint "$pins" \
    "$source_dir[runtime]"
