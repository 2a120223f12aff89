#!/bin/sh
# Install the operator into a new virtualenv, as the operator image does (its Dockerfile runs
# this script, and tests/chart/test_operator_image.py runs it into a temporary directory):
# dependencies pinned and hash-checked from requirements.txt, wheels only, then the package
# itself built with pinned build tools and installed without resolving anything else.
#
#   operator_image/install.sh SOURCE_DIR VENV_DIR      (PYTHON picks the interpreter)
#
# Regenerate the pins with `make operator-lock` after changing dependencies in pyproject.toml.
set -eu

if [ $# -ne 2 ]; then
  echo "usage: $0 SOURCE_DIR VENV_DIR" >&2
  exit 2
fi
src=$1
venv=$2
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The wheel is built in a throwaway virtualenv, so no build tool ends up in the image.
"$python" -m venv "$work/build"
"$work/build/bin/pip" install --quiet --require-hashes --only-binary=:all: \
  -r "$here/build-requirements.txt"
"$work/build/bin/pip" wheel --quiet --no-deps --no-build-isolation \
  --wheel-dir "$work/wheels" "$src"

"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --require-hashes --only-binary=:all: -r "$here/requirements.txt"
"$venv/bin/pip" install --quiet --no-deps --no-index "$work"/wheels/tenantry-*.whl
# Python 3.11's venv seeds an unpinned setuptools that nothing needs at run time.
"$venv/bin/pip" uninstall --quiet --yes setuptools
# Every dependency of the package must have come from the pinned set.
"$venv/bin/pip" check
