"""`gateway config check FILE`: validate a config and its policy without serving."""

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
    from gateway.config import load_config
    from gateway.policy import load_policy

    try:
        config = load_config(args.file)
        policy = load_policy(config.policy)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    versions = sum(len(m.versions) for m in config.models.values())
    print(f"ok: {args.file}: {len(config.models)} model(s), {versions} version(s), {len(config.tokens)} token(s), "
          f"store {config.store if config.store == 'embedded' else 'redis'}, policy {policy.version}")
    return 0
