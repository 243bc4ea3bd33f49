#!/usr/bin/env bash
# Download and unpack one night of ZTF public alerts (https://ztf.uw.edu/alerts/public/).
# A thin wrapper around `python -m fink.sim.download`; see `--help` for the options.
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 NIGHT [--dest DIR] [--base-url URL] [--no-progress]   (NIGHT as YYYYMMDD)" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$root/.venv/bin/python" ]; then
    python="$root/.venv/bin/python"
else
    python="python3"
fi
# run from a clone even where the package is not installed
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m fink.sim.download "$@"
