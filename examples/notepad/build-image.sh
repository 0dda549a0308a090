#!/usr/bin/env bash
# Build the notepad image (plane-example-notepad:latest) on this machine, without
# any registry: a FROM-scratch image holding this host's Python interpreter, its
# standard library, wsproto, h11 and app.py.  Prints the image tag on stdout.
#
#   examples/notepad/build-image.sh [--tag TAG] [--force]
#
# The work is done by build_image.py, run with plane's virtualenv (./.venv of the
# repository, which has the docker SDK, wsproto and h11), or with $PYTHON.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then
    python="$repo/.venv/bin/python"
  else
    python=python3
  fi
fi
exec "$python" "$here/build_image.py" "$@"
