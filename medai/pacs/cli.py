"""``medai pacs serve`` and ``medai pacs status``: options, start-up line, signals, the status table.

Exit codes: ``serve`` 0 after SIGTERM or Ctrl-C (everything acknowledged is in the spool), 1 when it cannot
start (a config error, a port in use, no model), 2 usage errors; ``status`` 0, or 1 for a folder that is no
spool.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Any

from medai.errors import ConfigError
from medai.labels import INTENDED_USE
from medai.pacs.config import ImageSyntax, build_config, load_config_file

__all__ = ["add_serve_arguments", "add_status_arguments", "run_serve_cli", "run_status_cli"]


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``medai pacs serve`` (each overrides the same setting of ``--config``)."""
    p.add_argument("--config", help="TOML settings file (see README, 'Connecting a PACS'); flags override it")
    p.add_argument("--ae-title", help="medai's AE title (default: MEDAI)")
    p.add_argument("--host", help="address to listen on (default: 127.0.0.1, loopback only; 0.0.0.0: all)")
    p.add_argument("--port", type=int, help="DICOM port (default: 11112)")
    p.add_argument(
        "--allow-ae",
        action="append",
        metavar="AE[@HOST],...",
        help="calling AE titles allowed to send, comma-separated, optionally bound to a host; '*' for any",
    )
    p.add_argument(
        "--destination", action="append", metavar="AE@HOST:PORT", help="send results here by C-STORE (repeatable)"
    )
    p.add_argument("--stow", action="append", metavar="URL", help="send results to this DICOMweb root (STOW-RS)")
    p.add_argument("--spool", help="durable spool folder: instances, results, queue, audit (default: medai-spool)")
    p.add_argument("--audit-log", help="tamper-evident audit trail, one record per series (default: SPOOL/audit.jsonl)")
    p.add_argument("--idle-seconds", type=float, help="a series is complete after this long idle (default: 5)")
    p.add_argument("--min-free-mb", type=float, help="refuse associations below this free disk space (default: 1024)")
    p.add_argument("--max-associations", type=int, help="concurrent incoming associations (default: 8)")
    p.add_argument("--max-pdu", type=int, dest="max_pdu_bytes", help="largest PDU received in bytes (default: 1 MiB)")
    p.add_argument("--tls-cert", help="PEM certificate of the listener (enables DICOM TLS; needs --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--tls-ca", help="PEM CA bundle; peers must then present a certificate it signed")
    p.add_argument("--model", help="ONNX model (default: $MEDAI_MODEL or models/medai-ref.onnx)")
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: one per core)")
    p.add_argument("--seg", action="store_true", default=None, help="also send a DICOM SEG of lungs and opacities")
    p.add_argument("--key-slices", type=int, help="Secondary Capture key images per series (default: 4)")
    p.add_argument(
        "--image-syntax", choices=[s.value for s in ImageSyntax], help="key images' transfer syntax (default: explicit)"
    )


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spool", required=True, help="the spool folder of the service")
    p.add_argument("--idle-seconds", type=float, help="the service's idle time: complete series show as 'waiting'")
    p.add_argument("--json", action="store_true", help="print the status as JSON")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    file_values = load_config_file(args.config) if args.config else {}
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "ae_title",
            "host",
            "port",
            "spool",
            "audit_log",
            "idle_seconds",
            "min_free_mb",
            "max_associations",
            "max_pdu_bytes",
            "model",
            "threads",
            "seg",
            "key_slices",
            "image_syntax",
        )
    }
    overrides["allow_ae"] = ",".join(args.allow_ae) if args.allow_ae else None
    overrides["destination"] = args.destination
    overrides["stow"] = args.stow
    if args.tls_cert or args.tls_key or args.tls_ca:
        if not (args.tls_cert and args.tls_key):
            raise ConfigError("--tls-cert and --tls-key must be given together")
        overrides["tls"] = {"certificate": args.tls_cert, "private_key": args.tls_key, "ca_certificates": args.tls_ca}
    return {"file": file_values, "overrides": overrides}


def run_serve_cli(args: argparse.Namespace) -> int:
    """Run the service until SIGTERM or SIGINT."""
    from medai.pacs.service import PacsService
    from medai.pacs.worker import destination_names

    settings = _settings(args)
    config = build_config(settings["file"], settings["overrides"])
    if args.verbose == 0:
        logging.getLogger("medai").setLevel(logging.INFO)  # a service logs what it does
    service = PacsService(config)
    try:
        host, port = service.start()
    except OSError as exc:
        service.queue.close()
        print(f"medai pacs: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"medai pacs: listening on {host}:{port} as {config.ae_title}{' (TLS)' if config.tls else ''}; "
        f"results to {', '.join(destination_names(config))}; spool {config.spool}; model "
        f"{service.classifier.model_id}. {INTENDED_USE}",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    print("medai pacs: stopping (everything acknowledged is in the spool)", file=sys.stderr, flush=True)
    service.stop()
    return 0


def run_status_cli(args: argparse.Namespace) -> int:
    from medai.pacs.status import format_status, read_status

    status = read_status(args.spool, idle_seconds=args.idle_seconds)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0
