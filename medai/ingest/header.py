"""Fast, memoized reading of DICOM header values by keyword.

pydicom converts raw element bytes into Python values on first access; for a
300-slice series most of that work is repeated on identical bytes
(orientation, pixel spacing, UIDs, rows, columns, rescale...). :func:`value`
memoizes the conversion by (tag, VR, encoding, raw bytes), which makes
header extraction several times faster; values that differ per slice
(position, SOPInstanceUID) are converted as usual.

Returned values are shared between datasets: treat them as read-only.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

__all__ = ["value"]

_MAX_CACHE = 8192
_MAX_RAW_BYTES = 256
_cache: dict[tuple[Any, ...], Any] = {}
_tags: dict[str, tuple[Any, bool]] = {}
# Value representations whose conversion depends only on the raw bytes (not on the character
# set or on PixelRepresentation, as the ambiguous "US or SS" ones do).
_CACHEABLE_VRS = {"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UI", "CS", "DA", "TM", "AS"}


def _tag(keyword: str) -> tuple[Any, bool]:
    """(tag, whether its values may be memoized)."""
    known = _tags.get(keyword)
    if known is None:
        number = tag_for_keyword(keyword)
        if number is None:
            raise ValueError(f"keyword must be a DICOM keyword, not {keyword!r}")
        known = _tags[keyword] = (Tag(number), dictionary_VR(number) in _CACHEABLE_VRS)
    return known


def value(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """The value of ``keyword`` in ``ds`` (``default`` when absent or empty).

    Example:
        >>> ds = Dataset()
        >>> ds.Rows = 512
        >>> value(ds, "Rows"), value(ds, "Columns", 0)
        (512, 0)
    """
    tag, cacheable = _tag(keyword)
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement):
        raw = elem.value
        if raw is None or not cacheable or len(raw) > _MAX_RAW_BYTES:
            result = ds[tag].value
        else:
            key = (tag, elem.VR, elem.is_little_endian, elem.is_implicit_VR, raw)
            try:
                result = _cache[key]
            except KeyError:
                result = ds[tag].value
                if len(_cache) >= _MAX_CACHE:
                    _cache.clear()
                _cache[key] = result
    else:
        result = elem.value
    if result is None or result == "":
        return default
    return result
