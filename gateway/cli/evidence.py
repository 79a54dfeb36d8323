"""`gateway evidence keygen`, `gateway evidence verify DIR [--key PUB]` and
`gateway evidence verify-bundle BUNDLE [--key PUB]`.

verify exits 0 when the log verifies, 1 when it does not (one line naming the
first bad record), 2 when the directory or key cannot be read at all.
verify-bundle likewise: 0 verified, 1 a problem (one line naming the first),
2 not a readable bundle or a bad key file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evidence", help="evidence log: signing keys and offline verification")
    sub = parser.add_subparsers(dest="evidence_command", metavar="SUBCOMMAND", parser_class=type(parser))
    parser.set_defaults(func=lambda args: _usage(parser))

    keygen = sub.add_parser("keygen", help="create an Ed25519 checkpoint signing key pair")
    keygen.add_argument("--out", default="evidence-signing", metavar="PREFIX",
                        help="write PREFIX.key (private, mode 0600) and PREFIX.pub (default: %(default)s)")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(func=_keygen)

    verify = sub.add_parser("verify", help="verify an evidence log directory offline")
    verify.add_argument("directory", metavar="DIR")
    verify.add_argument("--key", action="append", metavar="PUB",
                        help="trusted public key PEM for checkpoint signatures (repeatable); "
                             "without it the keys stored in DIR are used")
    verify.add_argument("--verbose", "-v", action="store_true", help="also list every problem and warning")
    verify.set_defaults(func=_verify)
    _register_export(sub)

    bundle = sub.add_parser("verify-bundle", help="verify an exported evidence bundle (.tar.gz) offline")
    bundle.add_argument("bundle", metavar="BUNDLE")
    bundle.add_argument("--key", action="append", metavar="PUB",
                        help="trusted public key PEM for the manifest and checkpoint signatures (repeatable); "
                             "without it the keys inside the bundle are used, which proves integrity, not origin")
    bundle.add_argument("--require-cosignatures", type=_count, default=0, metavar="K",
                        help="demand that K witnesses (other replicas of the fleet) cosigned every log up to its "
                             "records, consistently with the checkpoint used (default: 0)")
    bundle.add_argument("--witness-key", action="append", metavar="PUB",
                        help="trusted witness public key PEM (repeatable; a replica's evidence-witness.pub); "
                             "without it the witness keys inside the bundle are used")
    bundle.add_argument("--verbose", "-v", action="store_true", help="also list every problem and note")
    bundle.set_defaults(func=_verify_bundle)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _register_export(sub: argparse._SubParsersAction) -> None:
    from gateway.cli.remote import add_remote_arguments

    export = sub.add_parser("export", help="download a self-verifying bundle of evidence from a running gateway (auditor)")
    what = export.add_mutually_exclusive_group(required=True)
    what.add_argument("--incident", help="everything about one incident: its window, timeline and records")
    what.add_argument("--since", help="start (unix seconds or ISO 8601, e.g. 2026-11-27T10:00:00Z); needs --until")
    export.add_argument("--until", help="end, exclusive")
    export.add_argument("--model", help="only this model's records")
    export.add_argument("-o", "--output", required=True, metavar="BUNDLE.tar.gz")
    add_remote_arguments(export, json_output=False)  # it writes a file, not a table
    export.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    import httpx

    from gateway.cli.remote import refusal, token as remote_token, unreachable

    if args.since and not args.until:
        raise CliError("--since needs --until", 2)
    token = remote_token(args)  # --token, --token-file or GATEWAY_TOKEN: an auditor or operator token
    params = {k: v for k, v in {"incident": args.incident, "since": args.since, "until": args.until, "model": args.model}.items() if v}
    out = Path(args.output)
    partial = out.with_name(out.name + ".part")
    try:
        with httpx.stream("GET", args.url.rstrip("/") + "/admin/evidence/export", params=params,
                          headers={"authorization": f"Bearer {token}"}, timeout=600) as response:
            if response.status_code != 200:
                response.read()
                try:
                    data = response.json()
                except ValueError:
                    data = None
                raise refusal(response.status_code, response.reason_phrase, data, response.text)
            with open(partial, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise unreachable(args, exc) from None
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CliError(f"cannot write {out}: {exc.strerror or exc}", 2) from None
    partial.replace(out)
    print(f"wrote {out} ({out.stat().st_size} bytes); check it anywhere with: gateway evidence verify-bundle {out}")
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _keygen(args: argparse.Namespace) -> int:
    from gateway.evidence import generate_signing_key, write_keypair

    private, public = Path(args.out + ".key"), Path(args.out + ".pub")
    for path in (private, public):
        if path.exists() and not args.force:
            raise CliError(f"{path} already exists (use --force to overwrite)", 2)
    try:
        write_keypair(generate_signing_key(), private, public, force=args.force)
    except OSError as exc:
        raise CliError(f"cannot write key: {exc}", 2) from None
    print(f"private key: {private} (mode 0600; give it to the gateway only)")
    print(f"public key:  {public} (give it to whoever runs `gateway evidence verify --key`)")
    return 0


def _trusted_keys(paths: list[str] | None) -> list:
    """Every public key in the given PEM files (a file may hold several); unreadable is exit 2."""
    from gateway.evidence import load_public_keys

    keys = []
    for path in paths or []:
        try:
            keys.extend(load_public_keys(Path(path).read_bytes()))
        except (OSError, ValueError, TypeError) as exc:
            raise CliError(f"cannot read public key {path}: {exc}", 2) from None
    return keys


def _report(report, verbose: bool, details) -> int:
    print(report.summary())
    if verbose:
        for kind, lines in details:
            for line in lines:
                print(f"  {kind}: {line}")
    return 0 if report.ok else 1


def _verify(args: argparse.Namespace) -> int:
    from gateway.evidence import VerifyError, verify_log

    keys = _trusted_keys(args.key)
    try:
        report = verify_log(args.directory, keys or None)
    except VerifyError as exc:
        raise CliError(str(exc), 2) from None
    except OSError as exc:
        raise CliError(f"cannot read {args.directory}: {exc}", 2) from None
    return _report(report, args.verbose, [("problem", report.problems), ("warning", report.warnings)])


def _verify_bundle(args: argparse.Namespace) -> int:
    from gateway.evidence import BundleError, verify_bundle

    keys = _trusted_keys(args.key)
    witnesses = _trusted_keys(args.witness_key)
    try:
        report = verify_bundle(Path(args.bundle), trusted_keys=keys or None,
                               require_cosignatures=args.require_cosignatures, witness_keys=witnesses or None)
    except BundleError as exc:
        raise CliError(str(exc), 2) from None
    except OSError as exc:
        raise CliError(f"cannot read {args.bundle}: {exc}", 2) from None
    return _report(report, args.verbose, [("problem", report.problems), ("note", report.notes)])