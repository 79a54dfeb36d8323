#!/usr/bin/env bash
# Run the test suite: installs what this machine lacks, then runs pytest in ./.venv.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/proxy -x`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)  # tests/thirdparty; /usr/sbin is often off a user's PATH
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ] || missing+=(prometheus)  # promtool: tests/proxy/test_metrics.py
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "error: the tests need ${missing[*]}: install them (apt-get install -y ${missing[*]}) and run again" >&2
    exit 2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
# Node clients the tests drive (the official openai npm package), from the lock file.
if [ ! -d tests/clients/node/node_modules/openai ]; then
  npm ci --prefix tests/clients/node --no-audit --no-fund --loglevel=error >/dev/null
fi
# The OpenID Provider the console's single sign-on tests sign in through (oidc-provider), from its lock file.
if [ ! -d tests/console/oidc/node_modules/oidc-provider ]; then
  npm ci --prefix tests/console/oidc --no-audit --no-fund --loglevel=error >/dev/null
fi
# The virtualenv's commands (`gateway` among them) come first, as in a shell that activated it.
export PATH="$PWD/.venv/bin:$PATH"
# Everything the tests start listens on loopback: a proxy set for this shell must not carry it
# (tests/upstream/test_egress.py sets its own proxy variables for the gateways it starts).
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
exec .venv/bin/python -m pytest "$@"
