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
    p.add_argument(
        "--split",
        choices=("train", "heldout"),
        default="train",
        help="acquisition ranges: train, or heldout (outside the training ranges) (default: train)",
    )
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(args: argparse.Namespace) -> int:
    from medai.phantoms import files as phantom_files

    return phantom_files.run_cli(args)


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
    from medai.ingest import inspection

    return inspection.run_inspect_cli(args)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on labelled cases: AUC with CIs, operating points, calibration, subgroups",
        description=(
            "Score the cases of a manifest split, synthetic held-out phantoms or a test world with a model and write "
            "report.html (self-contained), metrics.json and predictions.csv. Cases that fail become error rows. "
            "Research use only; not a medical device."
        ),
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint (.pt) written by medai train, or with --world an exported model (.onnx) served as a "
        "hospital runs it (quantification and decision layer included)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", help="manifest CSV (path,label[,patient_id,split,site,scanner,...])")
    source.add_argument(
        "--synthetic-heldout", type=int, metavar="N", help="evaluate on N synthetic held-out phantoms instead"
    )
    source.add_argument(
        "--world",
        choices=("train", "heldout", "independent-val", "independent-test", "real", "real-sweep", "real-atelectasis"),
        help="a test world with ground truth (docs/ood.md): in-distribution, leave-extremes-out, the independent "
        "phantom family, the real patient, its normal scan under acquisition changes or with dependent atelectasis; "
        "adds lesion %%, lung-volume and severity metrics",
    )
    p.add_argument("--n", type=int, default=60, help="cases of a synthetic --world (default: 60)")
    p.add_argument("--out", required=True, help="report folder (created)")
    p.add_argument(
        "--split", choices=("train", "val", "test", "all"), default="test", help="manifest split (default: test)"
    )
    p.add_argument("--prevalence", type=float, default=None, help="covid19 prevalence for PPV/NPV by Bayes, e.g. 0.1")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for 95%% CIs (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the phantoms (default: 0)")
    p.add_argument("--min-subgroup", type=int, default=20, help="smallest subgroup with metrics (default: 20)")
    p.add_argument("--batch-size", type=int, default=4, help="cases per forward pass (default: 4)")
    p.add_argument("--device", default="cpu", help="torch device for the model, e.g. cpu or cuda (default: cpu)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medai.evaluation import run as evaluation_run

    return evaluation_run.run_cli(args)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the 3D CNN on a manifest or on synthetic phantoms (torchrun for DDP)",
        description="Train the classifier with the shared preprocessing, MONAI augmentation, early stopping and "
        "temperature scaling; writes last.pt (resumable), best.pt and model.pt to --out-dir. For several GPUs or "
        "processes: torchrun --nproc_per_node N -m medai.cli train ...",
    )
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--manifest", help="manifest CSV (path,label[,patient_id,split,...])")
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N synthetic phantoms")
    p.add_argument("--synthetic-val", type=int, default=0, help="validation phantoms (default: max(12, N/5))")
    p.add_argument("--out-dir", default="runs/medai", help="run folder (default: runs/medai)")
    p.add_argument("--output", help="also write the final checkpoint here, e.g. models/my-model.pt")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (default: 30)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size per process (default: 8)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    p.add_argument("--patience", type=int, default=8, help="early-stopping patience in epochs (default: 8)")
    p.add_argument("--monitor", choices=("val_loss", "val_auc"), default="val_loss", help="early-stopping metric")
    p.add_argument("--grid", type=int, nargs=3, metavar=("Z", "Y", "X"), help="input grid (default: 80 64 96)")
    p.add_argument(
        "--lung-margin-mm",
        type=float,
        default=10.0,
        help="the network sees the lungs the quantification finds plus this margin (mm); 0: the whole crop "
        "(default: 10)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--workers", type=int, default=1, help="data-loader workers per process (default: 1)")
    p.add_argument("--prep-workers", type=int, default=2, help="processes preparing cases (default: 2)")
    p.add_argument("--cache-dir", help="preprocessed-input cache (default: $MEDAI_CACHE_DIR or ~/.cache/medai)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the input cache")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--max-steps-per-epoch", type=int, default=0, help="cap steps per epoch (smoke tests)")
    p.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    p.add_argument("--init-from", help="start from this checkpoint's weights (fine-tuning; same tensor shapes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from medai.training import loop as train

    return train.run_cli(args)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (logits + in-graph CAM, metadata) after a parity check",
        description="Convert a checkpoint from medai train to ONNX (opset 18, dynamic batch) with the class "
        "activation map as a second output and everything serving needs in its metadata. onnxruntime must "
        "match torch (max |logit diff| <= 1e-4, CAM correlation >= 0.999) or nothing is written.",
    )
    p.add_argument("checkpoint", help="checkpoint (.pt) written by medai train")
    p.add_argument("--out", required=True, help="ONNX file to write, e.g. models/my-model.onnx")
    p.add_argument("--name", help="model name in the metadata and model id (default: the file stem of --out)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from medai.training.export import export_onnx

    report = export_onnx(args.checkpoint, args.out, model_name=args.name)
    print(f"wrote {report.path} (sha256 {report.sha256})")
    print(
        f"parity on {report.n_parity_inputs} inputs: max |logit diff| {report.max_logit_diff:.2e}, "
        f"min CAM correlation {report.min_cam_corr:.6f}"
    )
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="score one study (folder, zip or file): probabilities, label, lesion %% and severity",
        description="Select and score the CT series of one study with the ONNX model (torch-free). "
        "Research use only; not a medical device, not for diagnosis.",
    )
    p.add_argument("path", help="folder, zip archive or DICOM file of one study")
    p.add_argument("--model", help="ONNX model (default: $MEDAI_MODEL or the shipped models/medai-ref.onnx)")
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from medai.inference.classifier import Classifier, explain_qc_flags
    from medai.labels import INTENDED_USE

    clf = Classifier.load(args.model)
    pred = clf.predict_path(args.path)
    if args.json:
        print(json.dumps(pred.to_dict(), indent=2))
        return 0
    q = pred.quantification
    probs = "  ".join(f"{name} {p:.3f}" for name, p in pred.probabilities.items())
    print(f"series   {pred.series_uid}")
    print(f"model    {pred.model_id} ({', '.join(clf.providers)})")
    print(f"label    {pred.label}{'  (indeterminate)' if pred.indeterminate else ''}")
    print(f"p        {probs}")
    print(
        f"lungs    {q.lung_volume_ml:.0f} ml (right {q.right_lung_volume_ml:.0f}, left {q.left_lung_volume_ml:.0f}); "
        f"lesions {q.lesion_percent:.1f} % (ground glass {q.ggo_percent:.1f}, consolidation "
        f"{q.consolidation_percent:.1f}); severity {pred.severity.value}"
    )
    for line in explain_qc_flags(pred.qc_flags):
        print(f"qc       {line}")
    print(f"time     {pred.timings['total']:.2f} s")
    print(INTENDED_USE)
    return 0


def _add_score(sub: argparse._SubParsersAction) -> None:
    from medai.batch.cli import add_arguments

    p = sub.add_parser(
        "score",
        help="score every study under folders, zip archives or a manifest into CSV/JSONL/Parquet (resumable)",
        description="Find every DICOM series, select the one to score per study, score it and append one row per "
        "series (ok, error or skipped, with the reason) to --out as it finishes. Rerunning the same command "
        "resumes. Parallel: local worker processes, a local Dask cluster (--dask) or an existing one "
        "(--scheduler). Research use only; not for diagnosis.",
    )
    add_arguments(p)
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    from medai.batch import cli as score_cli

    return score_cli.run_cli(args)


# ---------------------------------------------------------------- medai pacs (the PACS hook, medai/pacs/)


def _add_pacs(sub: argparse._SubParsersAction) -> None:
    from medai.pacs.cli import add_serve_arguments, add_status_arguments

    p = sub.add_parser(
        "pacs",
        help="the PACS hook: receive CT series by DICOM, score them, send SR and key images back",
        description="Research use only; not a medical device, not for diagnosis.",
    )
    pacs = p.add_subparsers(title="pacs commands", metavar="PACS_COMMAND")
    serve = pacs.add_parser(
        "serve",
        help="run the DICOM listener, scorer and sender until stopped",
        description="Listen for C-STORE of CT series; when a series has been idle for --idle-seconds, score it and "
        "send a DICOM SR (TID 1500), Secondary Capture key images and optionally a SEG to the destinations. "
        "Every acknowledged instance is in the durable spool; a restart resumes. Research use only.",
    )
    add_serve_arguments(serve)
    serve.set_defaults(func=_cmd_pacs_serve)
    status = pacs.add_parser("status", help="show the queue of a spool: received, scoring, sent, failed")
    add_status_arguments(status)
    status.set_defaults(func=_cmd_pacs_status)


def _cmd_pacs_serve(args: argparse.Namespace) -> int:
    from medai.pacs import cli as pacs_cli

    return pacs_cli.run_serve_cli(args)


def _cmd_pacs_status(args: argparse.Namespace) -> int:
    from medai.pacs import cli as pacs_cli

    return pacs_cli.run_status_cli(args)


# ---------------------------------------------------------------- medai deidentify


def _add_deidentify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deidentify",
        help="write a de-identified copy of DICOM studies (PS3.15 Basic Application Level Confidentiality Profile)",
        description="Apply DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile, to every "
        "instance under IN and write them to OUT/STUDY/SERIES/SOP.dcm under new UIDs, consistent across each study; "
        "private attributes are removed, pixel data are untouched (the copy scores exactly as the original), and "
        "instances that may carry burned-in identifying text are refused and listed. NIfTI volumes are rewritten "
        "without their header text. Exit 1 when any instance was refused.",
    )
    p.add_argument("input", metavar="IN", help="folder, zip archive or file")
    p.add_argument("output", metavar="OUT", help="output folder (outside IN)")
    p.add_argument("--retain-uids", action="store_true", help="keep UIDs (Retain UIDs Option)")
    p.add_argument(
        "--retain-dates",
        action="store_true",
        help="keep dates and times (Retain Longitudinal Temporal Information with Full Dates Option)",
    )
    p.add_argument(
        "--key",
        help="key of the replacement UIDs (@FILE, env:VARIABLE or the key, 16 bytes or more): the same key maps "
        "the same study to the same UIDs in a later export; default: a random key (unlinkable)",
    )
    p.set_defaults(func=_cmd_deidentify)


def _cmd_deidentify(args: argparse.Namespace) -> int:
    from medai.batch.pseudonym import read_key
    from medai.report.deidentify import deidentify_tree

    try:
        key = read_key(args.key) if args.key else None
    except ValueError as exc:
        raise MedaiError(f"--key: {exc}") from exc
    summary = deidentify_tree(
        args.input, args.output, retain_uids=args.retain_uids, retain_dates=args.retain_dates, key=key
    )
    print(
        f"de-identified {summary.written} instances and {summary.volumes} NIfTI volumes into {args.output}; "
        f"{len(summary.refused)} refused, {summary.skipped} files were not DICOM"
    )
    for where, why in summary.refused:
        print(f"refused {where}: {why}", file=sys.stderr)
    return 1 if summary.refused else 0


# ---------------------------------------------------------------- medai audit (the tamper-evident trail)


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="check a tamper-evident audit trail written by score, pacs serve or app")
    audit = p.add_subparsers(title="audit commands", metavar="AUDIT_COMMAND")
    verify = audit.add_parser(
        "verify",
        help="check every record's hash chain, sequence and the head; exit 1 naming the first bad record",
        description="Exit 0 when the log is intact; 1 naming the first record that was edited, deleted, moved or "
        "cut. Prints the head hash: keep it elsewhere and pass it back with --head to detect a rewritten log.",
    )
    verify.add_argument("path", help="the audit log (e.g. SPOOL/audit.jsonl)")
    verify.add_argument("--head", help="a head hash kept from an earlier check: the log must still contain it")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_cmd_audit_verify)


def _cmd_audit_verify(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from medai.report.audit import verify_audit_log

    result = verify_audit_log(args.path, expected_head=args.head)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    elif result.ok:
        print(f"{args.path}: intact, {result.records} records; head {result.head_hash}")
    else:
        print(
            f"medai audit: {args.path}: {result.problem} ({result.records} intact records before it)", file=sys.stderr
        )
    return 0 if result.ok else 1


# ---------------------------------------------------------------- medai app (the viewer, issue 15)


def _add_app(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="open the radiologist viewer in the browser: triage worklist, images with overlays, report",
        description="Run the Streamlit viewer (the 'viewer' extra): a worklist of the studies under --data (or a "
        "results file, an upload, a PACS over DICOMweb) sorted by triage priority, multiplanar images with the "
        "saliency, lung and opacity overlays, the results and the exports. Listens on 127.0.0.1 unless --host "
        "says otherwise. Research use only; not for diagnosis.",
    )
    p.add_argument("--data", help="folder of studies to open (DICOM folders, zips, NIfTI)")
    p.add_argument("--results", help="a medai score results file: its scored studies open without scoring again")
    p.add_argument("--dicomweb", help="DICOMweb root of a PACS to list, e.g. http://127.0.0.1:8042/dicom-web")
    p.add_argument("--port", type=int, default=8501, help="port (default: 8501)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--max-upload-mb", type=int, default=2048, help="largest upload in MB (default: 2048)")
    p.add_argument("--audit-log", help="append one tamper-evident record per scoring to this audit trail")
    p.set_defaults(func=_cmd_app)


def app_command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line of ``medai app`` (no telemetry, no file watching, no tracebacks)."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "app" / "viewer.py"
    if not script.is_file():
        raise MedaiError(f"the viewer must be installed beside medai, not missing at {script}")
    command = [sys.executable, "-m", "streamlit", "run", str(script)]
    command += ["--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true"]
    command += ["--server.maxUploadSize", str(args.max_upload_mb), "--server.fileWatcherType", "none"]
    command += ["--browser.gatherUsageStats", "false", "--client.showErrorDetails", "none", "--theme.base", "dark"]
    command += ["--client.toolbarMode", "viewer", "--"]
    for name in ("data", "results", "dicomweb", "audit_log"):
        value = getattr(args, name, None)
        if value:
            command += [f"--{name.replace('_', '-')}", str(Path(value).resolve()) if name != "dicomweb" else value]
    return command


def _cmd_app(args: argparse.Namespace) -> int:
    import importlib.util
    import os

    if importlib.util.find_spec("streamlit") is None:
        raise MedaiError("the viewer needs Streamlit: pip install 'medai[viewer]'")
    for name in ("data", "results"):
        value = getattr(args, name)
        if value and not os.path.exists(value):
            raise MedaiError(f"--{name} must be an existing path, not {value!r}")
    command = app_command(args)
    print(f"medai viewer on http://{args.host}:{args.port}  (research use only, not for diagnosis; Ctrl-C stops it)")
    sys.stdout.flush()
    os.execv(command[0], command)  # streamlit replaces this process: signals and the exit code are its own


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
    _add_evaluate(sub)
    _add_train(sub)
    _add_export(sub)
    _add_predict(sub)
    _add_score(sub)
    _add_pacs(sub)
    _add_app(sub)
    _add_deidentify(sub)
    _add_audit(sub)
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
