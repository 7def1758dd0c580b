#!/usr/bin/env bash
# Size and descriptor check of the built firmware; see size-check.py. Arguments pass through.
set -euo pipefail
exec python3 "$(dirname "$0")/size-check.py" "$@"
