"""`gateway model sign|verify`: OpenSSF Model Signing bundles on the command line.

Exit codes: 0 valid (or signed), 1 invalid model or signature, 2 usage error or
unusable input (missing signature, unreadable key). Never a traceback: library
input errors become a one-line `CliError`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli import CliError
from gateway.integrity import IntegrityError, VerificationReport, sign_model, verify_model
from gateway.integrity.hashing import ALGORITHMS
from gateway.integrity.sign import default_signature_path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bytes") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive number of bytes")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("model", help="sign and verify model folders (OpenSSF Model Signing)")
    sub = parser.add_subparsers(dest="model_command", metavar="{sign,verify}", required=True)
    _register_sign(sub)
    _register_verify(sub)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="DIR", type=Path, help="model folder (or single model file)")
    p.add_argument("--signature", metavar="SIG", type=Path, help="bundle path (default: DIR/model.sig)")
    p.add_argument("--ignore-path", metavar="PATH", action="append", default=[], help="path inside DIR to leave out (repeatable)")
    p.add_argument("--allow-symlinks", action="store_true", help="follow symlinked files instead of refusing them")


def _register_sign(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sign", help="sign a model with an ECDSA private key")
    _common(p)
    p.add_argument("--key", metavar="PRIVATE.pem", type=Path, required=True, help="ECDSA P-256/P-384/P-521 private key")
    p.add_argument("--hash", choices=ALGORITHMS, default="sha256", help="digest of each file or shard (default sha256)")
    p.add_argument("--shard-size", metavar="BYTES", type=_positive_int, help="hash files in shards of BYTES (shards serialisation)")
    p.add_argument("--cert", metavar="LEAF.pem", type=Path, help="sign with this certificate instead of a bare key")
    p.add_argument("--chain", metavar="CA.pem", type=Path, action="append", default=[], help="intermediate certificates (repeatable)")
    p.set_defaults(func=_sign)


def _register_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify a model against its bundle")
    _common(p)
    trust = p.add_mutually_exclusive_group(required=True)
    trust.add_argument("--key", metavar="PUBLIC.pem", type=Path, help="ECDSA public key of the signer")
    trust.add_argument("--cert-root", metavar="CA.pem", type=Path, help="trusted root certificate(s) for the certificate method")
    p.add_argument("--ignore-unsigned", action="store_true", help="do not report files the signature does not cover")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.set_defaults(func=_verify)


def _sign(args: argparse.Namespace) -> int:
    try:
        result = sign_model(
            args.model, args.key, signature_path=args.signature, hash_algorithm=args.hash,
            shard_size=args.shard_size, ignore_paths=args.ignore_path, allow_symlinks=args.allow_symlinks,
            certificate_path=args.cert, certificate_chain_paths=args.chain,
        )
    except IntegrityError as exc:
        raise CliError(str(exc), 2) from None
    shards = f", shards of {result.shard_size} bytes" if result.shard_size else ""
    print(f"signed {args.model}: {result.files} files, {result.hash_algorithm}{shards}")
    print(f"root digest sha256:{result.root_digest}")
    print(f"signer {result.signer}")
    print(f"signature written to {result.signature_path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    signature = args.signature or default_signature_path(args.model)
    try:
        report = verify_model(
            args.model, signature_path=signature, public_key_path=args.key, cert_root_path=args.cert_root,
            ignore_unsigned=args.ignore_unsigned, ignore_paths=args.ignore_path, allow_symlinks=args.allow_symlinks,
        )
    except IntegrityError as exc:
        raise CliError(str(exc), 2) from None
    print(report.to_json() if args.json else _human(report))
    return 0 if report.valid else 1


def _human(report: VerificationReport) -> str:
    """A verdict line, then one line per differing file and per problem."""
    if report.valid:
        shards = f", shards of {report.shard_size} bytes" if report.shard_size else ""
        return (
            f"VALID {report.model}: {report.resources} resources, {report.hash_algorithm}{shards}\n"
            f"root digest sha256:{report.root_digest}\nsigner {report.signer}"
        )
    lines = [f"INVALID {report.model} (signature {report.signature})"]
    lines += [f"  {d.kind:<8} {d.path}" for d in report.differences]
    lines += [f"  problem: {p}" for p in report.problems]
    return "\n".join(lines)

