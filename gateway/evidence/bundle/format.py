"""What an evidence bundle holds: its member names, format and version, and the README it carries.

A bundle is one `.tar.gz`:

    README.txt               how to verify, what each file is
    manifest.json            sha256 and size of every other file, plus a description of the export
    manifest.sig             base64 Ed25519 signature over the exact bytes of manifest.json
    manifest-key.pub         PEM public key of the key that signed the manifest
    checkpoint-keys.pem      the log's checkpoint public keys (its checkpoint-keys.pem)
    checkpoints.txt          signed checkpoint notes: the log's first, the last before the records, the one used
    consistency.json         RFC 9162 consistency proofs between consecutive checkpoints
    records.jsonl            one line per selected leaf, with its inclusion proof against the last checkpoint
    decrypted-bodies.jsonl   the bodies of those records the log could decrypt
    witnesses.json           (optional) checkpoints other logs' witnesses cosigned, each with a
                             consistency proof to the checkpoint the records are proven against
    witness-keys.pem         (optional) the public keys of those witnesses
    <extras>                 opaque files the caller adds (config, policy, model signatures, ...)

The decrypted bodies are covered by the manifest signature only: the log
stores them encrypted, so the Merkle proofs cannot vouch for the plaintext
(plain base64 bodies are cross-checked against the leaf).
"""

from __future__ import annotations

from ..checkpoints import Checkpoint

FORMAT = "oversight-gateway-evidence-bundle"
VERSION = 1

README = "README.txt"
MANIFEST = "manifest.json"
MANIFEST_SIG = "manifest.sig"
MANIFEST_KEY = "manifest-key.pub"
CHECKPOINT_KEYS = "checkpoint-keys.pem"
CHECKPOINTS = "checkpoints.txt"
CONSISTENCY = "consistency.json"
RECORDS = "records.jsonl"
BODIES = "decrypted-bodies.jsonl"
WITNESSES = "witnesses.json"
WITNESS_KEYS = "witness-keys.pem"

# Files the manifest must list (manifest.json and manifest.sig are the two it cannot list).
REQUIRED = (README, MANIFEST_KEY, CHECKPOINT_KEYS, CHECKPOINTS, CONSISTENCY, RECORDS, BODIES)
# Names an extra file cannot take.
# Files a bundle may hold or not (a log no witness has seen has no cosignatures).
OPTIONAL = (WITNESSES, WITNESS_KEYS)
RESERVED = frozenset((MANIFEST, MANIFEST_SIG) + REQUIRED + OPTIONAL)


def readme(origin: str, cp: Checkpoint, number: int, records: int, bodies: int, extras: list[str],
           witnesses: int = 0) -> bytes:
    """README.txt: what the bundle is, how to verify it, what each file holds."""
    extra_lines = "".join(f"  {name}\n" for name in extras) or "  (none)\n"
    return f"""Oversight gateway evidence bundle
=================================

Log:        {origin}
Checkpoint: #{number}, tree size {cp.size}, root {cp.root.hex()}
Records:    {records} (decrypted bodies for {bodies})
Witnessed:  cosignatures by {witnesses} witness(es)

How to verify (needs only the oversight-gateway package, no network, no log):

    gateway evidence verify-bundle THIS.tar.gz --key GATEWAY.pub

--key names the gateway's evidence public key, obtained independently of
this bundle (repeatable; every key that signed a checkpoint or the manifest
must be given). Without --key the signatures are checked against the keys
inside the bundle: that proves the bundle is intact and self-consistent,
not who made it. --require-cosignatures K also demands that K witnesses
(other logs of the fleet, --witness-key to name them) cosigned a checkpoint
that covers every record and that the log proves consistent with the one
used: a log rewritten and re-signed with its own key fails. Exit code 0 = verified, 1 = a problem (named on one line),
2 = not a readable bundle. Do not trust files from an extracted copy
without running the check on the archive itself.

What is checked: manifest.sig over manifest.json; every file's sha256 and
size against the manifest (none missing, none added); every checkpoint's
Ed25519 signature (C2SP signed note); RFC 9162 consistency proofs between
consecutive checkpoints; each record's leaf bytes, its RFC 9162 inclusion
proof against the root of the last checkpoint, indexes strictly increasing.

Files
-----
manifest.json           sha256 and size of every file below, and a description
                        of the export (filters, time, log origin, checkpoint used)
manifest.sig            base64 Ed25519 signature over the exact bytes of manifest.json
manifest-key.pub        PEM public key that signed the manifest
checkpoint-keys.pem     PEM public keys that signed the log's checkpoints
checkpoints.txt         the log's signed checkpoint notes (C2SP signed-note /
                        tlog-checkpoint), oldest first, up to the one used;
                        each note is followed by a blank line
consistency.json        RFC 9162 consistency proofs (hex) between consecutive checkpoints
records.jsonl           one JSON object per exported record, in log order:
                        index, leaf_b64 (the exact leaf bytes: Merkle leaf hash is
                        SHA-256(0x00 || leaf)), record (the leaf parsed),
                        tree_size, inclusion_proof (hex hashes, RFC 9162 2.1.3)
decrypted-bodies.jsonl  plaintext of the request/response bodies the exporting
                        gateway could decrypt: index, bodies {{name: {{body,
                        body_encoding: utf-8|base64}}}}. The log stores these
                        encrypted, so only the manifest signature vouches for the
                        plaintext. SENSITIVE: handle this bundle accordingly.
witnesses.json          checkpoints of this log that witnesses cosigned (C2SP
                        tlog-cosignature/v1 lines on the signed note), each with an
                        RFC 9162 consistency proof to the checkpoint used (optional)
witness-keys.pem        PEM public keys of those witnesses (optional)
README.txt              this file

Other files, added by the exporter (opaque; vouched for by the manifest):
{extra_lines}""".encode()
