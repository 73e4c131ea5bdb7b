"""Settings of ``medai pacs serve``: a TOML file, command-line flags over it, checked once at start.

Every setting has a default that is safe on a fresh machine (loopback only, nothing allowed in until the
administrator lists the calling AE titles). A file looks like::

    ae_title = "MEDAI"
    host = "0.0.0.0"                   # listen on every interface (default: 127.0.0.1, loopback only)
    port = 11112
    allow_ae = ["CT01", "ORTHANC@10.0.0.5"]   # calling AE titles, optionally bound to a peer host; "*": any
    spool = "/var/lib/medai/spool"
    audit_log = "/var/log/medai/audit.jsonl"   # default: SPOOL/audit.jsonl
    idle_seconds = 5                   # a series is complete after this long without a new instance
    network_timeout_s = 60             # a silent peer is dropped after this long (and its series complete)
    min_free_mb = 2048                 # refuse associations when the spool's disk has less free space
    seg = true                         # also send a DICOM Segmentation of lungs and opacities

    [[destination]]                    # C-STORE results here (several allowed)
    ae_title = "ORTHANC"
    host = "10.0.0.5"
    port = 4242

    [[stow]]                           # and/or to a DICOMweb STOW-RS endpoint
    url = "https://pacs.example.org/dicom-web"

    [tls]                              # optional: DICOM TLS on the listener (and to the destinations)
    certificate = "/etc/medai/medai.crt"
    private_key = "/etc/medai/medai.key"
    ca_certificates = "/etc/medai/ca.crt"   # peers' CA; with it, peers must present a certificate

Flags (``--ae-title``, ``--destination AE@HOST:PORT``, ...) override the file; see ``medai pacs serve --help``.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medai.errors import ConfigError

__all__ = [
    "ANY_AE",
    "AllowedPeer",
    "Destination",
    "ImageSyntax",
    "PacsConfig",
    "StowDestination",
    "TlsSettings",
    "build_config",
    "load_config_file",
]

#: ``allow_ae`` entry that accepts every calling AE title.
ANY_AE = "*"
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII without backslash, 16 at most


def _ae_title(value: object, setting: str) -> str:
    text = str(value).strip()
    if not _AE_TITLE.match(text) or not text:
        raise ConfigError(f"{setting} must be an AE title of 1-16 printable characters, not {value!r}")
    return text


def _port(value: object, setting: str) -> int:
    try:
        port = int(str(value))
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ConfigError(f"{setting} must be a TCP port 1-65535, not {value!r}")
    return port


@dataclass(frozen=True)
class AllowedPeer:
    """A calling AE title medai accepts associations from, optionally only from one host."""

    ae_title: str
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> AllowedPeer:
        """``"AE"`` or ``"AE@HOST"``.

        Example:
            >>> AllowedPeer.parse("ORTHANC@127.0.0.1")
            AllowedPeer(ae_title='ORTHANC', host='127.0.0.1')
        """
        ae, _, host = str(text).partition("@")
        if ae.strip() == ANY_AE:
            return cls(ANY_AE, host.strip() or None)
        return cls(_ae_title(ae, "allow_ae"), host.strip() or None)

    def admits(self, ae_title: str, host: str) -> bool:
        """Whether a peer calling as ``ae_title`` from ``host`` matches this entry."""
        return (self.ae_title == ANY_AE or self.ae_title == ae_title.strip()) and self.host in (None, host)


@dataclass(frozen=True)
class Destination:
    """A DICOM node the results are sent to with C-STORE."""

    ae_title: str
    host: str
    port: int

    @property
    def name(self) -> str:
        """``AE@HOST:PORT``, the destination's key in the queue and the status."""
        return f"{self.ae_title}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``"AE@HOST:PORT"``.

        Example:
            >>> Destination.parse("ORTHANC@127.0.0.1:4242").port
            4242
        """
        ae, at, address = str(text).partition("@")
        host, colon, port = address.rpartition(":")
        if not at or not colon or not host:
            raise ConfigError(f"destination must be AE@HOST:PORT, not {text!r}")
        return cls(_ae_title(ae, "destination AE title"), host, _port(port, "destination port"))


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb endpoint the results are sent to with STOW-RS (``POST {url}/studies``)."""

    url: str
    username: str | None = None
    password_env: str | None = None  # the environment variable holding the password (never the file)
    timeout_s: float = 60.0

    @property
    def name(self) -> str:
        return f"stow:{self.url}"


@dataclass(frozen=True)
class TlsSettings:
    """DICOM TLS (PS3.15 B.1): the listener's certificate and, optionally, the CA its peers must chain to."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None


class ImageSyntax(enum.StrEnum):
    """Transfer syntaxes for the Secondary Capture images."""

    EXPLICIT = "explicit"  # Explicit VR Little Endian: every PACS takes it
    RLE = "rle"  # RLE Lossless: about a third of the size; falls back to explicit where refused


@dataclass(frozen=True)
class PacsConfig:
    """Everything ``medai pacs serve`` needs; see the module docstring for the file format."""

    ae_title: str = "MEDAI"
    host: str = "127.0.0.1"  # loopback only; "0.0.0.0" to listen on every interface
    port: int = 11112
    allow_ae: tuple[AllowedPeer, ...] = ()  # empty: nobody may send (a service must be told whom to trust)
    destinations: tuple[Destination, ...] = ()
    stow: tuple[StowDestination, ...] = ()
    spool: Path = Path("medai-spool")
    audit_log: Path | None = None  # the tamper-evident audit trail (default: SPOOL/audit.jsonl)
    idle_seconds: float = 5.0  # a series is complete after this long with no new instance (and no open sender)
    refused_hold_seconds: float = 120.0  # a series with an instance refused for lack of space waits this long
    min_free_mb: float = 1024.0  # free space the spool's disk keeps; below it associations are refused
    max_associations: int = 8  # concurrent incoming associations
    max_pdu_bytes: int = 1_048_576  # largest P-DATA PDU medai receives (0: unlimited)
    network_timeout_s: float = 60.0  # an idle or stalled peer is dropped after this long
    tls: TlsSettings | None = None
    model: str | None = None  # ONNX model (default: $MEDAI_MODEL or the shipped one)
    threads: int | None = None  # onnxruntime threads (default: one per core)
    seg: bool = False  # also send a DICOM Segmentation of lungs and opacities
    key_slices: int = 4  # Secondary Capture key images per series
    image_syntax: str = ImageSyntax.EXPLICIT  # Secondary Capture transfer syntax: "explicit" or "rle"
    retry_base_s: float = 2.0  # first wait before re-sending to a destination that failed; doubles each time
    retry_max_s: float = 300.0  # longest wait between two tries
    give_up_hours: float = 72.0  # a delivery still failing after this long is marked failed
    max_scoring_attempts: int = 3  # a series whose scoring was interrupted this often is failed, not retried
    retention_hours: float = 168.0  # received instances are deleted this long after their results were sent

    def __post_init__(self) -> None:
        _ae_title(self.ae_title, "ae_title")
        _port(self.port, "port")
        checks = {
            "idle_seconds": (self.idle_seconds, 0.0),
            "refused_hold_seconds": (self.refused_hold_seconds, 0.0),
            "min_free_mb": (self.min_free_mb, 0.0),
            "network_timeout_s": (self.network_timeout_s, 1.0),
            "retry_base_s": (self.retry_base_s, 0.01),
            "retry_max_s": (self.retry_max_s, 0.01),
            "give_up_hours": (self.give_up_hours, 0.0),
            "retention_hours": (self.retention_hours, 0.0),
        }
        for name, (value, low) in checks.items():
            if not isinstance(value, int | float) or value < low:
                raise ConfigError(f"{name} must be a number >= {low}, not {value!r}")
        for name, value, low in (
            ("max_associations", self.max_associations, 1),
            ("max_pdu_bytes", self.max_pdu_bytes, 0),
            ("key_slices", self.key_slices, 1),
            ("max_scoring_attempts", self.max_scoring_attempts, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, not {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be an integer >= 1, not {self.threads!r}")
        if self.image_syntax not in {s.value for s in ImageSyntax}:
            raise ConfigError(
                f"image_syntax must be one of {[s.value for s in ImageSyntax]}, not {self.image_syntax!r}"
            )
        if not self.allow_ae:
            raise ConfigError(
                "allow_ae must list the calling AE titles medai accepts (e.g. --allow-ae CT01,ORTHANC), "
                f"or {ANY_AE!r} for any, not nothing"
            )
        if not self.destinations and not self.stow:
            raise ConfigError("destination must name at least one C-STORE (AE@HOST:PORT) or STOW-RS destination")
        if self.tls is not None:
            for name in ("certificate", "private_key", "ca_certificates"):
                path = getattr(self.tls, name)
                if path is not None and not Path(path).is_file():
                    raise ConfigError(f"tls {name} must be an existing file, not {str(path)!r}")

    @property
    def min_free_bytes(self) -> int:
        return int(self.min_free_mb * 1024 * 1024)


def _list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Sequence):
        return [str(v).strip() for item in value for v in str(item).split(",") if v.strip()]
    raise ConfigError(f"a list of strings (or a comma-separated string) is needed, not {value!r}")


def _destinations(values: Any) -> tuple[Destination, ...]:
    out = []
    for item in values or ():
        if isinstance(item, Mapping):
            unknown = set(item) - {"ae_title", "host", "port"}
            if unknown or not {"ae_title", "host", "port"} <= set(item):
                raise ConfigError(f"[[destination]] must have ae_title, host and port only, not {sorted(item)}")
            out.append(
                Destination(
                    _ae_title(item["ae_title"], "destination ae_title"),
                    str(item["host"]),
                    _port(item["port"], "destination port"),
                )
            )
        else:
            out.extend(Destination.parse(text) for text in _list(item))
    return tuple(out)


def _stow(values: Any) -> tuple[StowDestination, ...]:
    out = []
    for item in values or ():
        if isinstance(item, Mapping):
            try:
                out.append(StowDestination(**dict(item)))
            except TypeError as exc:
                raise ConfigError(
                    f"[[stow]] must have url and optional username, password_env, timeout_s: {exc}"
                ) from exc
        else:
            out.append(StowDestination(url=str(item)))
    for stow in out:
        if not stow.url.startswith(("http://", "https://")):
            raise ConfigError(f"stow url must start with http:// or https://, not {stow.url!r}")
    return tuple(out)


def _tls(value: Any) -> TlsSettings | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not {"certificate", "private_key"} <= set(value):
        raise ConfigError(f"[tls] must give certificate and private_key, not {value!r}")
    ca = value.get("ca_certificates")
    return TlsSettings(Path(value["certificate"]), Path(value["private_key"]), Path(ca) if ca else None)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML file as a dictionary (checked by :func:`build_config`).

    Raises:
        ConfigError: the file is missing or not valid TOML.
    """
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"config must be an existing TOML file, not {str(path)!r}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {exc}") from exc


def build_config(file_values: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> PacsConfig:
    """A checked :class:`PacsConfig` from a file's values with flags over them (``None`` flags are ignored).

    Keys are the field names of :class:`PacsConfig`; ``destination`` (C-STORE) and ``stow`` are lists.

    Raises:
        ConfigError: an unknown key or an invalid value, named.

    Example:
        >>> build_config({"allow_ae": "CT01", "destination": ["PACS@10.0.0.5:104"]}).destinations[0].ae_title
        'PACS'
    """
    values = dict(file_values)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if "destinations" in values:
        values["destination"] = values.pop("destinations")
    known = {f.name for f in dataclasses.fields(PacsConfig)} | {"destination"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"settings must be among {sorted(known)}, not {unknown}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key == "destination":
            kwargs["destinations"] = _destinations(value if isinstance(value, list) else [value])
        elif key == "stow":
            kwargs["stow"] = _stow(value if isinstance(value, list) else [value])
        elif key == "allow_ae":
            kwargs["allow_ae"] = tuple(AllowedPeer.parse(text) for text in _list(value))
        elif key == "tls":
            kwargs["tls"] = _tls(value)
        elif key in ("spool", "audit_log"):
            kwargs[key] = Path(value)
        else:
            kwargs[key] = value
    floats = ("idle_seconds", "refused_hold_seconds", "min_free_mb", "network_timeout_s", "retry_base_s", "retry_max_s")
    for key in floats:
        if isinstance(kwargs.get(key), int) and not isinstance(kwargs.get(key), bool):
            kwargs[key] = float(kwargs[key])
    try:
        return PacsConfig(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
