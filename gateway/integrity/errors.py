"""Exceptions of the integrity package.

Two families, because callers must treat them differently: `IntegrityInputError`
means the inputs cannot be used at all (missing signature, unreadable key): the
CLI exits 2. Everything else that is wrong with a model or a bundle is not an
exception for `verify_model`; it becomes a problem in the report (exit 1).
"""

from __future__ import annotations


class IntegrityError(Exception):
    """Base class of every error raised by `gateway.integrity`."""


class IntegrityInputError(IntegrityError):
    """An input cannot be used: unreadable key, missing signature, bad option."""


class ModelReadError(IntegrityInputError):
    """A file of the model cannot be read or is refused (symlink, special file).

    An input error when signing; a problem in the report when verifying.
    """


class BundleFormatError(IntegrityError):
    """The signature bundle or its statement is malformed; the message says where."""
