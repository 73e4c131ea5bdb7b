"""Model cards: the JSON file beside a shipped model that names its sha256, data and intended use.

Serving refuses a model whose bytes do not match its card: a corrupt copy, a
half-finished download or a silently replaced file must not score patients'
studies. numpy-free and torch-free; used by :mod:`medai.inference.classifier` and
:mod:`medai.quantify.head` when they load, and by training when it records its data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medai.errors import ModelError

__all__ = ["card_path", "file_sha256", "verify_model_file"]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file (model cards and checkpoints identify files by it)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(model: str | Path) -> Path:
    """The card of a model file: same folder and stem, ``.json``.

    Example:
        >>> card_path("models/medai-ref.onnx").name
        'medai-ref.json'
    """
    return Path(model).with_suffix(".json")


def verify_model_file(model: str | Path, *, card_required: bool) -> str:
    """The model file's sha256, checked against its card when there is one.

    Args:
        model: the model file.
        card_required: a missing card is an error (shipped models); otherwise it is only checked if present.

    Raises:
        ModelError: missing card when required, unreadable card, or a sha256 different from the card's.

    Example:
        >>> import tempfile, pathlib
        >>> m = pathlib.Path(tempfile.mkdtemp()) / "m.onnx"; _ = m.write_bytes(b"abc")
        >>> verify_model_file(m, card_required=False)[:12]
        'ba7816bf8f01'
    """
    model = Path(model)
    digest = file_sha256(model)
    card = card_path(model)
    if not card.is_file():
        if card_required:
            raise ModelError(f"model card {str(card)!r} must exist beside the shipped model, but it is missing")
        return digest
    try:
        expected = json.loads(card.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"model card {str(card)!r} must be JSON with a 'sha256'; reading it failed: {exc}") from exc
    if expected != digest:
        raise ModelError(
            f"model {str(model)!r} has sha256 {digest[:16]}..., but its card {card.name} says {str(expected)[:16]}...: "
            "the file is corrupt or was replaced; restore it or update the card"
        )
    return digest
