"""`gateway config check FILE`: validate a config and its policy without serving.

It refuses exactly what `gateway serve` would refuse before listening: besides the schema
of both files, it builds the wired gateway (which loads TLS files and routes; no network
I/O) and checks the notification template, so a file that passes here starts there.
"""

from __future__ import annotations

import argparse
import sys

from gateway.configfile import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="work with config files")
    csub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="validate a config file and the policy it names")
    check.add_argument("file")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from gateway.wiring import Gateway

    try:
        gateway = Gateway.from_files(args.file)  # what `gateway serve` does before it listens
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    gateway.catalog.close()
    config, policy = gateway.config, gateway.policy
    versions = sum(len(m.versions) for m in config.models.values())
    print(f"ok: {args.file}: {len(config.models)} model(s), {versions} version(s), {len(config.tokens)} token(s), "
          f"store {config.store if config.store == 'embedded' else 'redis'}, policy {policy.version}")
    return 0
