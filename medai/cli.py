"""The ``medai`` command line.

Each subcommand is a small function ``_cmd_NAME(args) -> int``; heavy imports
happen inside it so that ``medai --help`` stays instant. Errors that medai
raises on purpose (:class:`medai.errors.MedaiError`) are shown as one line;
the exit code is 0 on success, 1 when the work failed, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medai.errors import MedaiError

__all__ = ["main"]

log = logging.getLogger("medai")


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="generate synthetic chest-CT phantom studies with ground truth",
        description=(
            "Write phantom chest-CT studies (normal, covid19, other_pneumonia) as DICOM series "
            "and/or NIfTI, with ground-truth lung and lesion masks and a manifest.csv. "
            "Synthetic data only: not patient data."
        ),
    )
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=int, default=3, help="number of studies (default: 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same studies (default: 0)")
    p.add_argument(
        "--classes",
        default="normal,covid19,other_pneumonia",
        help="comma-separated classes to cycle through (default: all three)",
    )
    p.add_argument("--slices", type=int, default=None, help="slices per series (default: from slice thickness)")
    p.add_argument("--matrix", type=int, default=512, help="rows/columns per slice (default: 512)")
    p.add_argument("--slice-thickness", type=float, default=None, help="slice thickness in mm (default: random)")
    p.add_argument(
        "--format", choices=("dicom", "nifti", "both"), default="dicom", help="output format (default: dicom)"
    )
    p.add_argument(
        "--transfer-syntax",
        default="explicit",
        help="explicit, implicit, big-endian, deflated, rle, jpeg2000, jpegls, jpeg-lossless (default: explicit)",
    )
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from medai import synthetic

    return synthetic.run_cli(args)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="list the DICOM series under a path, the one selected for scoring and its QC report",
        description="Walk a folder, file or zip archive; report every series found, why series were "
        "rejected, which one would be scored, and the QC checks of that series.",
    )
    p.add_argument("path", help="folder, DICOM file or zip archive")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from medai import dicom

    return dicom.run_inspect_cli(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medai",
        description="Chest-CT COVID-19 triage. Research use only; not a medical device, not for diagnosis.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_synth(sub)
    _add_inspect(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medai`` command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from medai import __version__

        print(f"medai {__version__}")
        return 0
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except MedaiError as exc:
        print(f"medai: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medai: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
