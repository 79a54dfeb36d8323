"""OpenSSF Model Signing (OMS): sign and verify model folders.

Reads and writes the format of the reference tool `model_signing`
(sigstore/model-transparency): a Sigstore bundle v0.3 whose DSSE envelope signs
an in-toto statement listing every file (or shard) digest of the model. Key
method (ECDSA P-256/384/521) and certificate method (chain up to a given root).

The functions block (they hash the whole model); call them from a worker thread.
"""

from gateway.integrity.errors import IntegrityError, IntegrityInputError, ModelReadError
from gateway.integrity.sign import SignResult, sign_model
from gateway.integrity.verify import Difference, VerificationReport, verify_model

__all__ = [
    "Difference",
    "IntegrityError",
    "IntegrityInputError",
    "ModelReadError",
    "SignResult",
    "VerificationReport",
    "sign_model",
    "verify_model",
]
