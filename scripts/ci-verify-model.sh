#!/usr/bin/env sh
# Fail a CI pipeline unless MODEL_DIR matches its OpenSSF Model Signing bundle.
# Usage: scripts/ci-verify-model.sh MODEL_DIR SIG PUBKEY
# Exit 0 valid, 1 invalid (every differing file is listed), 2 unusable input.
set -eu
if [ "$#" -ne 3 ]; then
    echo "usage: $0 MODEL_DIR SIG PUBKEY" >&2
    exit 2
fi
if command -v gateway >/dev/null 2>&1; then
    exec gateway model verify "$1" --signature "$2" --key "$3"
fi
exec "${PYTHON:-python3}" -m gateway model verify "$1" --signature "$2" --key "$3"
