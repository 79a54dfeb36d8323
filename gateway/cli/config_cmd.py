"""`gateway config check|show|schema`: validate a config, print it as it runs, or print its JSON Schema.

`check` refuses exactly what `gateway serve` would refuse before listening: besides the schema
of both files, it builds the wired gateway (which loads TLS files and routes; no network
I/O) and checks the notification template, so a file that passes here starts there.

`show` prints the effective config — the file after `${ENV}` interpolation, with every
default filled in — with its secrets redacted by the same function evidence exports use
(`gateway.redaction.scrubbed_config`): token hashes, upstream and notification headers,
notification URLs and routing keys, evidence keys, passwords in URLs.

`schema` prints the JSON Schema (draft 2020-12) of a config file after `${ENV}` interpolation,
for editors and CI linters. Exit codes: 0 ok, 2 a file that cannot be read or used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from gateway.cli import USAGE
from gateway.configfile import ConfigError

_SCHEMA_ID = "https://json-schema.org/draft/2020-12/schema"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="check, show and describe config files")
    csub = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = csub.add_parser("check", help="validate a config file and the policy it names")
    check.add_argument("file")
    check.add_argument("--json", action="store_true", help="print {ok, problems, ...} as JSON on stdout")
    check.set_defaults(func=_check)

    show = csub.add_parser("show", help="print the effective config (defaults filled in, secrets redacted)")
    show.add_argument("file", nargs="?", default=os.environ.get("GATEWAY_CONFIG", "gateway.yaml"),
                      help="config file (default: $GATEWAY_CONFIG or gateway.yaml)")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=_show)

    schema = csub.add_parser("schema", help="print the JSON Schema of a config file")
    schema.set_defaults(func=_schema)


def _problems(args: argparse.Namespace, exc: ConfigError) -> int:
    if getattr(args, "json", False) and args.config_command == "check":
        _dump({"ok": False, "file": args.file, "problems": exc.problems})
    else:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
    return USAGE


def _check(args: argparse.Namespace) -> int:
    from gateway.wiring import Gateway

    try:
        gateway = Gateway.from_files(args.file)  # what `gateway serve` does before it listens
    except ConfigError as exc:
        return _problems(args, exc)
    gateway.catalog.close()
    config, policy = gateway.config, gateway.policy
    versions = sum(len(m.versions) for m in config.models.values())
    store = config.store if config.store == "embedded" else "redis"
    if args.json:
        _dump({"ok": True, "file": args.file, "problems": [], "models": len(config.models), "versions": versions,
               "tokens": len(config.tokens), "store": store, "policy": policy.version})
        return 0
    print(f"ok: {args.file}: {len(config.models)} model(s), {versions} version(s), {len(config.tokens)} token(s), "
          f"store {store}, policy {policy.version}")
    return 0


def _show(args: argparse.Namespace) -> int:
    import yaml

    from gateway.config import load_config
    from gateway.redaction import scrubbed_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        return _problems(args, exc)
    data = scrubbed_config(config)
    if args.json:
        _dump(data)
    else:
        print(f"# {config.source}: effective config, secrets redacted", flush=False)
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    return 0


def schema() -> dict[str, Any]:
    """The config file's JSON Schema (what `load_config` accepts, after `${ENV}` interpolation)."""
    from gateway.config import Config

    document = Config.model_json_schema()
    document["properties"].pop("source", None)  # set by the loader, not written in files
    return {"$schema": _SCHEMA_ID, **document, "title": "oversight gateway config"}


def _schema(args: argparse.Namespace) -> int:
    _dump(schema())
    return 0


def _dump(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2)
    print()
