"""Named DICOM statuses and association rejections that the PACS hook answers with (PS3.4 Annex B, PS3.8 9.3.4).

Every answer at the network edge is one of these names, never a bare number, so a log line or a test says
*why* a peer was refused.
"""

from __future__ import annotations

import enum

__all__ = ["AssociationRejection", "StoreStatus", "is_success", "is_transient"]


class StoreStatus(enum.IntEnum):
    """C-STORE and C-ECHO response statuses (PS3.4 Table B.2-1, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    #: a failure medai cannot attribute to the data (a bug, an unexpected error): the peer should retry.
    PROCESSING_FAILURE = 0x0110
    #: the SOP class is not one medai stores.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: no room: the spool is under its free-space watermark or the disk is full.
    OUT_OF_RESOURCES = 0xA700
    #: the data set is not a valid instance of its SOP class (missing UIDs, truncated pixel data).
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: the data set cannot be parsed at all.
    CANNOT_UNDERSTAND = 0xC000


def is_success(status: int) -> bool:
    """Success or warning (0x0000, 0x0001, 0xB000-0xBFFF): the instance was stored."""
    return status == 0x0000 or status == 0x0001 or 0xB000 <= status <= 0xBFFF


def is_transient(status: int) -> bool:
    """A failure worth retrying later unchanged: out of resources (0xA7xx) or a processing failure (0x0110)."""
    return 0xA700 <= status <= 0xA7FF or status == StoreStatus.PROCESSING_FAILURE


class AssociationRejection(enum.Enum):
    """A-ASSOCIATE-RJ (result, source, diagnostic) triples medai answers with (PS3.8 Table 9-21)."""

    #: permanent, service user: calling AE title not recognised (not on the allow-list, or from another host).
    CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
    #: transient, service provider (presentation): local limit exceeded (the spool is under its disk watermark).
    LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)

    @property
    def result(self) -> int:
        return self.value[0]

    @property
    def source(self) -> int:
        return self.value[1]

    @property
    def diagnostic(self) -> int:
        return self.value[2]
