"""Keyed pseudonyms for patient identifiers in result files.

A pseudonym is ``ps-`` followed by the first 32 hex digits of
HMAC-SHA256(key, field + NUL + value): the same key and value always give the
same pseudonym (results of one patient stay linkable across runs and
studies), a different key gives unrelated pseudonyms, and without the key a
pseudonym cannot be reversed or recomputed from a guessed identifier (which a
plain hash of a short patient ID could). The field name is mixed in, so a
patient ID and an accession number that happen to be equal get different
pseudonyms. Keep the key secret and separate from the results.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

__all__ = ["MIN_KEY_BYTES", "PSEUDONYM_PREFIX", "Pseudonymizer", "read_key"]

#: Shortest accepted key (bytes, after UTF-8 encoding).
MIN_KEY_BYTES = 16
#: Every pseudonym starts with this, so it is never mistaken for a real identifier.
PSEUDONYM_PREFIX = "ps-"
_HEX_DIGITS = 32


def read_key(spec: str) -> bytes:
    """The key bytes named by a command-line value.

    ``@PATH`` reads the key from a file (surrounding whitespace stripped),
    ``env:NAME`` from an environment variable, anything else is the key
    itself. Prefer a file or variable: a key on the command line is visible
    in the process list and the shell history.

    Raises:
        ValueError: the file or variable is missing, or the key is shorter than :data:`MIN_KEY_BYTES`.

    Example:
        >>> len(read_key("a-long-enough-secret-key"))
        24
    """
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise ValueError(f"pseudonym key file must exist, not {str(path)!r}")
        key = path.read_bytes().strip()
    elif spec.startswith("env:"):
        name = spec[4:]
        if name not in os.environ:
            raise ValueError(f"pseudonym key variable must be set, not missing: {name!r}")
        key = os.environ[name].strip().encode("utf-8")
    else:
        key = spec.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"pseudonym key must be at least {MIN_KEY_BYTES} bytes long, not {len(key)}")
    return key


class Pseudonymizer:
    """Replace identifiers by keyed pseudonyms (HMAC-SHA256).

    Args:
        key: the secret, at least :data:`MIN_KEY_BYTES` bytes.

    Example:
        >>> p = Pseudonymizer(b"0123456789abcdef")
        >>> p("PatientID", "SYN000000042") == p("PatientID", "SYN000000042")
        True
        >>> p("PatientID", "SYN000000042").startswith("ps-"), p("PatientID", "")
        (True, '')
    """

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"key must be at least {MIN_KEY_BYTES} bytes long, not {len(key)}")
        self._key = key

    def __repr__(self) -> str:
        return "Pseudonymizer(key=<hidden>)"

    def __call__(self, field: str, value: str) -> str:
        """The pseudonym of ``value`` in ``field`` (``""`` stays ``""``: nothing to hide)."""
        if not value:
            return ""
        message = field.encode("utf-8") + b"\x00" + value.encode("utf-8")
        digest = hmac.new(self._key, message, hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:_HEX_DIGITS]
