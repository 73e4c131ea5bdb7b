"""ONNX export (parity, metadata) and the torch-free serving engine medai.inference.classifier.Classifier."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from medai.errors import InvalidSeriesError, MedaiError, ModelError, NoSeriesError, QCReason
from medai.inference.calibration import DecisionRule, softmax
from medai.inference.classifier import METADATA_KEY, Classifier, QCFlag, default_providers
from medai.inference.network_input import network_input
from medai.labels import CLASS_NAMES, severity_from_percent
from medai.modelcard import file_sha256 as sha256_file
from medai.phantoms import synthetic
from medai.phantoms.ctwriter import write_ct_series
from medai.preprocess import PreprocessParams, to_model_input
from medai.training.export import export_onnx
from medai.training.network import CHECKPOINT_FORMAT, ModelSpec, build_model

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "medai-ref.onnx"
TINY_SPEC = ModelSpec(input_shape=(32, 32, 32), channels=(4, 8, 8), strides=(2, 2, 1), dropout=0.0, pooling="mean")
TINY_PREP = PreprocessParams(grid_shape=(32, 32, 32))


def _tiny_checkpoint(path: Path, *, seed: int = 0, temperature: float = 1.7, spec: ModelSpec = TINY_SPEC) -> Path:
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode folding is exercised
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    names = list(CLASS_NAMES)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_spec": spec.to_dict(),
            "model_state": model.state_dict(),
            "preprocess": TINY_PREP.to_dict(),
            "class_names": names,
            "temperature": temperature,
            "decision_rule": DecisionRule(class_names=tuple(names), positive_class="covid19").to_dict(),
            "data": {"kind": "test"},
            "epoch": 0,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("export")
    ckpt = _tiny_checkpoint(folder / "tiny.pt")
    report = export_onnx(ckpt, folder / "tiny.onnx", n_random=1, n_phantoms=1)
    return ckpt, report.path


@pytest.fixture(scope="module")
def phantom() -> synthetic.Phantom:
    spec = synthetic.sample_spec(np.random.default_rng(2024), label="covid19", split="heldout", matrix=160)
    return synthetic.generate(spec, fast=True)


def test_export_parity_and_metadata_round_trip(tiny_export: tuple[Path, Path], phantom: synthetic.Phantom) -> None:
    import onnx

    ckpt_path, onnx_path = tiny_export
    proto = onnx.load(str(onnx_path))
    assert proto.opset_import[0].version >= 17
    assert [o.name for o in proto.graph.output] == ["logits", "cam"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    clf = Classifier.load(onnx_path)
    assert clf.class_names == tuple(CLASS_NAMES)
    assert clf.temperature == pytest.approx(1.7)
    assert clf.preprocess == TINY_PREP
    assert clf.meta["checkpoint_sha256"] == sha256_file(ckpt_path)
    assert clf.meta["intended_use"].startswith("Research use only")
    assert clf.model_id == f"tiny@{sha256_file(onnx_path)[:12]}"

    # the served probabilities are torch's logits / T through softmax
    ckpt = torch.load(ckpt_path, weights_only=True)
    model = build_model(TINY_SPEC)
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    mi = to_model_input(phantom.volume, TINY_PREP)
    with torch.inference_mode():
        ref_logits = model(torch.from_numpy(mi.array[None])).numpy()
    pred = clf.predict(phantom.volume)
    np.testing.assert_allclose(pred.logits, ref_logits[0], atol=1e-4)
    expected = softmax(ref_logits, 1.7)[0]
    np.testing.assert_allclose([pred.probabilities[c] for c in clf.class_names], expected, atol=1e-4)


def test_lse_pooled_model_exports_with_parity(tmp_path: Path, phantom: synthetic.Phantom) -> None:
    spec = dataclasses.replace(TINY_SPEC, pooling="lse")
    ckpt = _tiny_checkpoint(tmp_path / "lse.pt", spec=spec)
    report = export_onnx(ckpt, tmp_path / "lse.onnx", n_random=1, n_phantoms=1)
    assert report.max_logit_diff <= 1e-4 and report.min_cam_corr >= 0.999
    clf = Classifier.load(report.path)
    assert clf.meta["model_spec"]["pooling"] == "lse"
    model = build_model(spec)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model_state"])
    mi = to_model_input(phantom.volume, TINY_PREP)
    with torch.inference_mode():
        ref_logits = model.eval()(torch.from_numpy(mi.array[None])).numpy()
    np.testing.assert_allclose(clf.predict(phantom.volume).logits, ref_logits[0], atol=1e-4)


def test_export_refuses_when_parity_fails_and_leaves_no_file(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "tiny.pt")
    with pytest.raises(ModelError, match="fails parity"):
        export_onnx(ckpt, tmp_path / "out.onnx", max_logit_diff=-1.0, n_random=1, n_phantoms=0)
    assert list(tmp_path.iterdir()) == [ckpt]


def test_export_of_a_bad_checkpoint_is_a_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        export_onnx(bad, tmp_path / "out.onnx")


def test_shipped_model_loads_with_its_card(shipped_classifier: Classifier) -> None:
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert shipped_classifier.path == SHIPPED
    assert shipped_classifier.sha256 == card["sha256"]
    assert shipped_classifier.providers == ["CPUExecutionProvider"]
    assert shipped_classifier.meta["checkpoint_sha256"] == card["checkpoint_sha256"]


def test_hash_mismatch_with_the_card_is_a_model_error(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    shutil.copy(SHIPPED, model)
    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    card["sha256"] = "0" * 64
    model.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="corrupt or was replaced"):
        Classifier.load(model)


def test_missing_or_foreign_model_files_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"existing \.onnx file"):
        Classifier.load(tmp_path / "absent.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelError, match="cannot load ONNX model"):
        Classifier.load(junk)


def test_model_without_medai_metadata_is_refused(tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(SHIPPED))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelError, match="metadata"):
        Classifier.load(bare)


def test_provider_fallback() -> None:
    # TensorRT only when asked for: onnxruntime-gpu lists it even where its libraries are missing
    assert default_providers(["CPUExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert default_providers(["TensorrtExecutionProvider"]) == ["TensorrtExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA; the fallback is to CPU")
    clf = Classifier.load(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert clf.providers == ["CPUExecutionProvider"]
    with pytest.raises(ModelError, match="none of the providers"):
        Classifier.load(providers=["CUDAExecutionProvider"])


def test_prediction_fields(shipped_classifier: Classifier, phantom: synthetic.Phantom) -> None:
    pred = shipped_classifier.predict(phantom.volume)
    assert set(pred.probabilities) == set(CLASS_NAMES)
    assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert pred.label in CLASS_NAMES
    assert isinstance(pred.indeterminate, bool)
    assert pred.model_id == shipped_classifier.model_id
    assert pred.series_uid == phantom.volume.series_uid
    assert pred.lung_mask.shape == pred.quantification.grid.shape == pred.lesion_mask.shape
    assert set(np.unique(pred.lung_mask)) <= {0, 1, 2}
    assert pred.severity == severity_from_percent(pred.lesion_percent)
    assert set(pred.timings) == {"preprocess", "inference", "quantify", "decision", "saliency", "total"}
    assert all(v >= 0 for v in pred.timings.values())
    for flag in pred.qc_flags:
        QCFlag(flag)
    # saliency: model grid, signed, scaled to 1 inside the lungs, zero outside them
    sal = pred.saliency
    assert sal.map.shape == shipped_classifier.preprocess.grid_shape
    assert float(np.abs(sal.map).max()) == pytest.approx(1.0)
    z = phantom.volume.shape[0] // 2
    # trilinear bleed reaches at most two model voxels past the lung edge (source voxels per model voxel: scale),
    # in-plane and from the lung of the neighbouring slices
    scale = network_input(phantom.volume, shipped_classifier.preprocess)[0].scale
    reach_z, reach = (int(np.ceil(2 * s)) for s in (scale[0], max(scale[1:])))
    lungs = pred.quantification.grid.upsample(pred.lung_mask) > 0
    near_z = lungs[max(0, z - reach_z) : z + reach_z + 1].any(axis=0)
    far = ~ndimage.binary_dilation(near_z, iterations=reach)
    assert float(np.abs(sal.source_slice(z)[far]).max()) < 0.05
    assert sal.source_slice(3).shape == phantom.volume.shape[1:]
    assert all(0 <= z < phantom.volume.shape[0] for z in sal.top_slices(5))
    d = pred.to_dict()
    json.dumps(d)
    assert d["intended_use"].startswith("Research use only")


def test_predict_many_matches_predict(shipped_classifier: Classifier, phantom: synthetic.Phantom) -> None:
    other = synthetic.generate(
        synthetic.sample_spec(np.random.default_rng(5), label="normal", split="heldout", matrix=128), fast=True
    )
    many = shipped_classifier.predict_many([phantom.volume, other.volume], batch_size=2)
    for volume, batched in zip([phantom.volume, other.volume], many, strict=True):
        single = shipped_classifier.predict(volume)
        assert single.label == batched.label
        np.testing.assert_allclose(single.logits, batched.logits, atol=1e-4)


def _ran_on(clf: Classifier, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads ``clf``'s network part runs on, from now on."""
    names: list[str] = []
    network_pass = clf._network_pass

    def spy(*args: Any) -> Any:
        names.append(threading.current_thread().name)
        return network_pass(*args)

    monkeypatch.setattr(clf, "_network_pass", spy)
    return names


def test_network_thread_changes_nothing_but_the_time(
    shipped_classifier: Classifier, phantom: synthetic.Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The network part runs on a thread of its own beside the opacity measurement; without one, in line."""
    clf = Classifier(*_parts(shipped_classifier))
    serial = Classifier(*_parts(shipped_classifier), network_thread=False)
    on_clf, on_serial = _ran_on(clf, monkeypatch), _ran_on(serial, monkeypatch)
    before = threading.active_count()
    beside, inline = clf.predict(phantom.volume), serial.predict(phantom.volume)
    assert on_clf == ["medai-network"] and on_serial == [threading.current_thread().name]
    # no thread is left behind: a single-threaded process may still fork to decode compressed pixels
    assert threading.active_count() == before
    assert beside.probabilities == inline.probabilities and beside.logits == inline.logits
    np.testing.assert_array_equal(beside.saliency.map, inline.saliency.map)
    np.testing.assert_array_equal(beside.lesion_mask, inline.lesion_mask)
    stages = sum(v for k, v in beside.timings.items() if k != "total")
    assert 0 < beside.timings["total"] <= stages + 0.05  # wall time: the overlapped stages are not added twice


def test_a_model_loaded_for_one_thread_keeps_the_network_in_line() -> None:
    from medai.preprocess import set_threads as set_distance_threads
    from medai.quantify.head import set_threads

    try:
        assert not Classifier.load(threads=1).network_thread  # a batch worker kept to one core
        assert Classifier.load(threads=2).network_thread
        assert not Classifier.load(threads=2, network_thread=False).network_thread
    finally:
        set_threads(None)
        set_distance_threads(None)


def test_an_error_on_the_network_thread_reaches_the_caller(
    shipped_classifier: Classifier, phantom: synthetic.Phantom, monkeypatch: pytest.MonkeyPatch
) -> None:
    clf = Classifier(*_parts(shipped_classifier))
    ran_on = _ran_on(clf, monkeypatch)

    def broken(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise ModelError(f"onnxruntime failed on a batch of {len(batch)}")

    monkeypatch.setattr(clf, "_run", broken)
    with pytest.raises(ModelError, match="failed on a batch of 2"):
        clf.predict_many([phantom.volume, phantom.volume], batch_size=2)
    assert ran_on == ["medai-network"]


def _parts(clf: Classifier) -> tuple[Any, ...]:
    """What a second :class:`Classifier` on the same onnxruntime session is made of (no global thread settings)."""
    return clf._session, clf.meta, clf.path, clf.sha256


def test_predict_path_reads_dicom_and_reports_problems(shipped_classifier: Classifier, tmp_path: Path) -> None:
    spec = synthetic.sample_spec(np.random.default_rng(8), label="other_pneumonia", split="heldout", matrix=128)
    volume = synthetic.generate(spec, fast=True).volume
    write_ct_series(volume, tmp_path / "ct")
    pred = shipped_classifier.predict_path(tmp_path / "ct")
    assert pred.series_uid == volume.series_uid
    assert pred.timings["load"] > 0
    np.testing.assert_allclose(pred.logits, shipped_classifier.predict(volume).logits, atol=1e-4)

    (tmp_path / "empty").mkdir()
    with pytest.raises(NoSeriesError):
        shipped_classifier.predict_path(tmp_path / "empty")
    other = synthetic.generate(
        synthetic.sample_spec(np.random.default_rng(9), label="normal", split="heldout", matrix=96), fast=True
    )
    write_ct_series(other.volume, tmp_path / "two" / "b")
    shutil.copytree(tmp_path / "ct", tmp_path / "two" / "a")
    with pytest.raises(MedaiError, match="must hold one study, not 2"):
        shipped_classifier.predict_path(tmp_path / "two")
    files = sorted((tmp_path / "ct").iterdir())
    for f in files[len(files) // 2 : len(files) // 2 + 3]:
        f.unlink()  # a gap
    with pytest.raises(InvalidSeriesError, match="no scorable series") as excinfo:
        shipped_classifier.predict_path(tmp_path / "ct")
    assert excinfo.value.reason is QCReason.SLICE_GAP


def test_inference_path_never_imports_torch(tmp_path: Path) -> None:
    spec = synthetic.sample_spec(np.random.default_rng(3), label="covid19", split="heldout", matrix=96)
    write_ct_series(synthetic.generate(spec, fast=True).volume, tmp_path / "ct")
    code = (
        "import sys\n"
        "import medai, medai.inference.classifier, medai.inference.saliency\n"
        "import medai.quantify.measure, medai.ingest.load\n"
        "assert medai.Classifier is medai.inference.classifier.Classifier\n"
        f"pred = medai.Classifier.load().predict_path({str(tmp_path / 'ct')!r})\n"
        "pred.saliency.to_source(); print(pred.label)\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'monai')))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() in CLASS_NAMES


def test_metadata_key_is_shared() -> None:
    from medai.inference import classifier as inference

    assert inference.METADATA_KEY == METADATA_KEY


def test_lung_cut_off_flags_a_scan_that_stops_inside_the_lungs(
    shipped_classifier: Classifier, phantom: synthetic.Phantom
) -> None:
    whole = shipped_classifier.predict(phantom.volume)
    assert QCFlag.LUNG_CUT_OFF not in whole.qc_flags  # the phantom covers apices to bases
    lung_slices = np.flatnonzero(phantom.lung_mask.any(axis=(1, 2)))
    middle = int(lung_slices[len(lung_slices) // 2])
    cut = dataclasses.replace(phantom.volume, hu=phantom.volume.hu[middle:], sop_instance_uids=())  # starts mid-chest
    assert QCFlag.LUNG_CUT_OFF in shipped_classifier.predict(cut).qc_flags


def test_new_quantification_rules_make_a_new_scoring_id(
    shipped_classifier: Classifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`medai score` resumes by the scoring id: rows measured by older quantification rules must not be reused."""
    from medai.quantify import measure

    before = shipped_classifier.scoring_id
    assert before.startswith(shipped_classifier.model_id + "+medai-quant@")
    assert before.endswith("+" + measure.QUANTIFY_VERSION.removeprefix("medai."))
    monkeypatch.setattr(measure, "QUANTIFY_VERSION", "medai.quantify/999")
    assert shipped_classifier.scoring_id != before
