#!/usr/bin/env sh
# Fail a CI pipeline unless MODEL_DIR matches its OpenSSF Model Signing bundle.
# Usage: scripts/ci-verify-model.sh MODEL_DIR SIG PUBKEY
# Exit 0 valid, 1 invalid (every differing file is listed), 2 unusable input or no gateway installed.
# Needs the `gateway` command on PATH: install the gateway in the job's Python environment
# (`pip install ./oversight-gateway` from a checkout, or the wheel `pip wheel` builds there) and put
# that environment's bin folder on PATH.
set -eu
if [ "$#" -ne 3 ]; then
    echo "usage: $0 MODEL_DIR SIG PUBKEY" >&2
    exit 2
fi
if ! command -v gateway >/dev/null 2>&1; then
    echo "error: the gateway command is not on PATH: install the gateway in this job's Python (pip install ./oversight-gateway from a checkout, or its wheel) and put that environment's bin folder on PATH" >&2
    exit 2
fi
exec gateway model verify "$1" --signature "$2" --key "$3"
