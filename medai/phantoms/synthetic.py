"""The phantom world: synthetic chest CT with ground truth, for tests, training, benchmarks and the demo.

No labelled COVID-19 CT exists on our machines, so every class is simulated
from its radiology (see :mod:`medai.phantoms.pathology`) in a patient drawn from the
seed (see :mod:`medai.phantoms.anatomy`), then "acquired": slice profile, in-plane
reconstruction kernel (blur or edge enhancement), correlated quantum noise,
int16 HU. The patient depends on the seed only (not on the label nor the
grid); the acquisition is drawn independently of the label, so class never
correlates with noise, size, body shape, slice count or HU offsets.

Every phantom is synthetic: not patient data, not for clinical use. Writing phantoms as DICOM series or
NIfTI files (and ``medai synth``) is :mod:`medai.phantoms.files`.

Acquisition ranges (``split`` of :func:`sample_spec`; pixel spacing is FOV / matrix). ``train`` covers what
real scanners produce (domain randomization); ``heldout`` lies just outside every range (leave extremes out):

=====================  ====================  ==========================================
parameter              ``train``             ``heldout`` (outside the training ranges)
=====================  ====================  ==========================================
slice thickness (mm)   0.6 - 5.0             5.0 - 6.0
FOV (mm)               290 - 480             260 - 290 or 480 - 500
noise (HU std)         4 - 45                45 - 60
kernel sharpness       0.04 - 0.96           0.0 - 0.04 or 0.96 - 1.0
patient scale          0.76 - 1.30           0.70 - 0.76 or 1.30 - 1.38
=====================  ====================  ==========================================

Both splits draw the scan protocol the same way: IV contrast (none 45 %, venous 35 %, arterial/CT angiogram
20 %), arms up (55 %), down beside the chest (30 %) or out of the field, a scan range from 5-160 mm below
the lung bases (upper abdomen: liver, spleen, stomach and gas-filled colon and bowel) to 0-80 mm above the
apices, motion (15 %) and streak artifacts (20 %). The patient adds obesity (20 %), expiration scans (12 %),
dependent atelectasis, nodules and emphysema (:mod:`medai.phantoms.pathology`).

Example:
    >>> ph = generate(PhantomSpec("covid19", 0.2, seed=1, acquisition=Acquisition(matrix=96, pixel_spacing_mm=4.0,
    ...     slice_thickness_mm=5.0)), fast=True)
    >>> ph.volume.hu.dtype, 15 < ph.lesion_percent < 25
    (dtype('int16'), True)
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

import numpy as np

from medai.labels import CLASS_NAMES
from medai.phantoms.anatomy import Grid, enhancement, sample_anatomy
from medai.phantoms.artifacts import add_motion, add_streaks
from medai.phantoms.pathology import apply_confounders, render_lesions, sample_pattern
from medai.phantoms.render import render_anatomy
from medai.volume import Volume

__all__ = [
    "GENERATOR",
    "HELDOUT_RANGES",
    "TRAIN_RANGES",
    "Acquisition",
    "AcquisitionRanges",
    "LesionLabel",
    "LungLabel",
    "Phantom",
    "PhantomSpec",
    "generate",
    "kernel_name",
    "phantom_uid",
    "sample_acquisition",
    "sample_spec",
]

log = logging.getLogger(__name__)

# Bump whenever the phantom drawn for a seed changes, so that anything cached from generated phantoms (the decision
# layer's served rows in scripts/train_reference.py) is made again.
GENERATOR = "medai.phantoms.synthetic/1"


class LungLabel(enum.IntEnum):
    """Values of :attr:`Phantom.lung_mask` (patient right is image left: x grows to the patient's left)."""

    RIGHT = 1
    LEFT = 2


class LesionLabel(enum.IntEnum):
    """Values of :attr:`Phantom.lesion_mask`, decided by lesion density."""

    GROUND_GLASS = 1
    CONSOLIDATION = 2


@dataclass(frozen=True)
class Acquisition:
    """How the phantom is scanned and reconstructed."""

    slice_thickness_mm: float = 1.25  # also the z spacing (contiguous slices)
    pixel_spacing_mm: float = 0.7  # in-plane; FOV = matrix * pixel spacing
    matrix: int = 512  # rows = columns
    n_slices: int | None = None  # default: cover the chest (300 mm x patient_scale) / thickness
    noise_hu: float = 12.0  # std of quantum noise (HU), correlated as after filtered back projection
    kernel_sharpness: float = 0.5  # 0 = smooth/soft-tissue kernel .. 1 = sharp/lung kernel (edge enhancing)
    patient_scale: float = 1.0  # body size factor (0.8 small .. 1.25 large)
    contrast: str = "none"  # IV contrast phase: none | venous | arterial (CT pulmonary angiogram)
    contrast_level: float = 0.5  # bolus strength 0..1 within the phase
    arms: str = "none"  # none (out of the field) | up (beside the head) | down (beside the chest)
    # Scan range below the lowest costophrenic recess and above the lung apices (mm). None for both: 300 mm
    # centred on the chest (the phantoms before the scan range was drawn).
    range_below_mm: float | None = None
    range_above_mm: float | None = None
    motion: float = 0.0  # breathing/cardiac motion doubling, 0 none .. 1 strong
    streaks: float = 0.0  # streaks from dense objects, 0 none .. 1 strong

    def __post_init__(self) -> None:
        checks = (
            ("slice_thickness_mm", 0.3 <= self.slice_thickness_mm <= 10, "in [0.3, 10]"),
            ("pixel_spacing_mm", 0.2 <= self.pixel_spacing_mm <= 16, "in [0.2, 16]"),
            ("matrix", 16 <= self.matrix <= 1024, "in [16, 1024]"),
            ("n_slices", self.n_slices is None or 1 <= self.n_slices <= 2000, "None or in [1, 2000]"),
            ("noise_hu", 0 <= self.noise_hu <= 300, "in [0, 300]"),
            ("kernel_sharpness", 0 <= self.kernel_sharpness <= 1, "in [0, 1]"),
            ("patient_scale", 0.6 <= self.patient_scale <= 1.5, "in [0.6, 1.5]"),
            ("contrast", self.contrast in ("none", "venous", "arterial"), "'none', 'venous' or 'arterial'"),
            ("contrast_level", 0 <= self.contrast_level <= 1, "in [0, 1]"),
            ("arms", self.arms in ("none", "up", "down"), "'none', 'up' or 'down'"),
            ("range_below_mm", self.range_below_mm is None or 0 <= self.range_below_mm <= 400, "None or in [0, 400]"),
            ("range_above_mm", self.range_above_mm is None or 0 <= self.range_above_mm <= 200, "None or in [0, 200]"),
            ("motion", 0 <= self.motion <= 1, "in [0, 1]"),
            ("streaks", 0 <= self.streaks <= 1, "in [0, 1]"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, not {getattr(self, name)!r}")

    def slices(self, lung_height_mm: float) -> int:
        """Number of slices produced for lungs ``lung_height_mm`` high."""
        if self.n_slices:
            return self.n_slices
        if self.range_below_mm is None and self.range_above_mm is None:
            return max(8, round(300 * self.patient_scale / self.slice_thickness_mm))
        length = lung_height_mm + (self.range_below_mm or 0.0) + (self.range_above_mm or 0.0)
        return max(8, round(length / self.slice_thickness_mm))


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate: class, lesion burden, patient seed and acquisition."""

    label: str  # one of CLASS_NAMES
    severity: float  # target lesion fraction of the total lung volume, 0..0.9 (0 for normal)
    seed: int  # the patient (anatomy, lesion layout, identity); same spec, same array
    acquisition: Acquisition = field(default_factory=Acquisition)

    def __post_init__(self) -> None:
        if self.label not in CLASS_NAMES:
            raise ValueError(f"label must be one of {CLASS_NAMES}, not {self.label!r}")
        if not 0 <= self.severity <= 0.9:
            raise ValueError(f"severity must be in [0, 0.9], not {self.severity!r}")
        if self.label == "normal" and self.severity != 0:
            raise ValueError(f"severity must be 0 for label 'normal', not {self.severity!r}")
        if self.label != "normal" and self.severity <= 0:
            raise ValueError(f"severity must be > 0 for label {self.label!r}, not {self.severity!r}")


@dataclass(frozen=True, eq=False)
class Phantom:
    """A generated study with its ground truth (all masks on the volume's grid)."""

    volume: Volume  # int16 HU >= -1024, LPS geometry, CT header
    lung_mask: np.ndarray  # uint8 (z, y, x): 0 outside, LungLabel.RIGHT, LungLabel.LEFT
    lesion_mask: np.ndarray  # uint8 (z, y, x): 0, LesionLabel.GROUND_GLASS, LesionLabel.CONSOLIDATION
    spec: PhantomSpec
    tissue_mask: np.ndarray | None = None  # uint8 medai.phantoms.anatomy.Tissue codes (dominant tissue per voxel)
    pattern: str = ""  # the drawn pattern: none, covid, lobar, bronchopneumonia, central

    @property
    def lesion_percent(self) -> float:
        """100 x lesion voxels / lung voxels."""
        lung = int(np.count_nonzero(self.lung_mask))
        return 100.0 * int(np.count_nonzero(self.lesion_mask)) / lung if lung else 0.0


# --- acquisition ranges ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcquisitionRanges:
    """Unions of intervals from which :func:`sample_acquisition` draws uniformly."""

    slice_thickness_mm: tuple[tuple[float, float], ...]
    fov_mm: tuple[tuple[float, float], ...]
    noise_hu: tuple[tuple[float, float], ...]
    kernel_sharpness: tuple[tuple[float, float], ...]
    patient_scale: tuple[tuple[float, float], ...]


# What real scanners produce (domain randomization): thin to thick slices, fields of view that cut the body,
# smooth to sharp kernels, low to high dose, adolescent to large patients.
TRAIN_RANGES = AcquisitionRanges(
    slice_thickness_mm=((0.6, 5.0),),
    fov_mm=((290.0, 480.0),),
    noise_hu=((4.0, 45.0),),
    kernel_sharpness=((0.04, 0.96),),
    patient_scale=((0.76, 1.3),),
)
# Leave-extremes-out: every factor just outside the training ranges (a test of extrapolation, never trained on).
HELDOUT_RANGES = AcquisitionRanges(
    slice_thickness_mm=((5.0, 6.0),),
    fov_mm=((260.0, 290.0), (480.0, 500.0)),
    noise_hu=((45.0, 60.0),),
    kernel_sharpness=((0.0, 0.04), (0.96, 1.0)),
    patient_scale=((0.7, 0.76), (1.3, 1.38)),
)


def _draw(rng: np.random.Generator, intervals: tuple[tuple[float, float], ...]) -> float:
    lengths = np.array([hi - lo for lo, hi in intervals])
    i = int(rng.choice(len(intervals), p=lengths / lengths.sum()))
    return float(rng.uniform(*intervals[i]))


def sample_acquisition(rng: np.random.Generator, *, split: str = "train", matrix: int = 160) -> Acquisition:
    """Draw an acquisition from :data:`TRAIN_RANGES` or :data:`HELDOUT_RANGES`.

    Example:
        >>> acq = sample_acquisition(np.random.default_rng(0), split="heldout")
        >>> acq.slice_thickness_mm >= 5.0
        True
    """
    ranges = {"train": TRAIN_RANGES, "heldout": HELDOUT_RANGES}.get(split)
    if ranges is None:
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    thickness = _draw(rng, ranges.slice_thickness_mm)
    fov = _draw(rng, ranges.fov_mm)
    noise = round(_draw(rng, ranges.noise_hu), 2)
    sharpness = round(_draw(rng, ranges.kernel_sharpness), 3)
    scale = round(_draw(rng, ranges.patient_scale), 3)
    protocol = rng.random(8)
    contrast = "none" if protocol[0] < 0.45 else "venous" if protocol[0] < 0.8 else "arterial"
    return Acquisition(
        slice_thickness_mm=round(thickness, 3),
        pixel_spacing_mm=round(fov / matrix, 4),
        matrix=matrix,
        noise_hu=noise,
        kernel_sharpness=sharpness,
        patient_scale=scale,
        contrast=contrast,
        contrast_level=round(float(protocol[1]), 3),
        arms="up" if protocol[2] < 0.55 else "down" if protocol[2] < 0.85 else "none",
        range_below_mm=round(5 + 155 * float(protocol[3]), 1),  # from the lung bases to the kidneys
        range_above_mm=round(80 * float(protocol[4]), 1),  # up to the neck
        motion=round(float(protocol[6]), 3) if protocol[5] < 0.15 else 0.0,
        streaks=round(0.3 + 0.7 * float(protocol[7]), 3) if protocol[5] > 0.8 else 0.0,
    )


def sample_spec(
    rng: np.random.Generator, *, label: str | None = None, split: str = "train", matrix: int = 160
) -> PhantomSpec:
    """Draw a phantom spec: class (uniform unless given), severity, seed and acquisition.

    The draws do not depend on the label (a fixed number of random numbers in
    a fixed order), so acquisition and patient are independent of class.
    Severity of diseased cases is log-uniform in [0.005, 0.75] (the pattern may cap it: a focal
    pneumonia covers at most 5 % of the lungs, a segmental one 20 %).

    Example:
        >>> spec = sample_spec(np.random.default_rng(0), label="covid19")
        >>> spec.label, 0.005 <= spec.severity <= 0.75
        ('covid19', True)
    """
    if label is not None and label not in CLASS_NAMES:
        raise ValueError(f"label must be one of {CLASS_NAMES} or None, not {label!r}")
    drawn = CLASS_NAMES[int(rng.integers(len(CLASS_NAMES)))]
    label = label or drawn
    severity = float(np.exp(rng.uniform(np.log(0.005), np.log(0.75))))
    seed = int(rng.integers(2**31 - 1))
    acquisition = sample_acquisition(rng, split=split, matrix=matrix)
    return PhantomSpec(label, 0.0 if label == "normal" else round(severity, 4), seed, acquisition)


# --- generation --------------------------------------------------------------------------------------


def _grid(spec: PhantomSpec, height: float, offset: tuple[float, float, float], n_sub: int) -> tuple[Grid, Grid]:
    acq = spec.acquisition
    th, ps, m, n = acq.slice_thickness_mm, acq.pixel_spacing_mm, acq.matrix, acq.slices(height)
    if acq.range_below_mm is None and acq.range_above_mm is None:
        zc = 0.48 * height + offset[2]
    else:  # the drawn range: from range_below under the recess (z = 0) to range_above over the apex
        zc = (height + (acq.range_above_mm or 0.0) - (acq.range_below_mm or 0.0)) / 2
    z = zc + (np.arange(n) - (n - 1) / 2) * th
    y = 15 * acq.patient_scale + offset[1] + (np.arange(m) - (m - 1) / 2) * ps
    x = offset[0] + (np.arange(m) - (m - 1) / 2) * ps
    z_sub = (z[:, None] + ((np.arange(n_sub) + 0.5) / n_sub - 0.5)[None, :] * th).ravel()
    return Grid(z, y, x), Grid(z_sub, y, x)


def _kernel_and_noise(hu: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """In-plane reconstruction kernel (blur or edge enhancement) and correlated quantum noise.

    The kernel is a modulation transfer function applied per slice in Fourier
    space: a Gaussian blur (wider for smooth kernels) times an edge boost for
    sharp ones. The noise has the band-pass power spectrum of filtered back
    projection (low frequencies suppressed, grain set by the kernel); it is
    drawn from a small bank of filtered slices, each slice taking a randomly
    shifted and flipped bank slice, so slices are mutually uncorrelated.
    """
    from scipy import fft

    ps, s = acq.pixel_spacing_mm, acq.kernel_sharpness
    ny, nx = hu.shape[1:]
    fy, fx = np.fft.fftfreq(ny, ps)[:, None], np.fft.rfftfreq(nx, ps)[None, :]
    f2 = (fy**2 + fx**2).astype(np.float32)  # cycles/mm squared

    def gauss(sigma_mm: float) -> np.ndarray:
        return np.exp(-2 * np.pi**2 * sigma_mm**2 * f2)

    sigma = 0.35 + 0.55 * (1 - s)
    mtf = gauss(sigma) * (1 + 1.6 * max(s - 0.5, 0) * (1 - gauss(1.0)))
    out = np.empty_like(hu)
    for k in range(0, hu.shape[0], 32):
        spectrum = fft.rfft2(hu[k : k + 32], axes=(1, 2), workers=1)
        out[k : k + 32] = fft.irfft2(spectrum * mtf, s=(ny, nx), axes=(1, 2), workers=1)
    if acq.noise_hu > 0:
        grain = 0.3 + 0.5 * (1 - s)
        nps = gauss(grain) * (1 - 0.85 * gauss(3 * grain))
        bank_size = min(hu.shape[0], 12)
        bank = fft.irfft2(
            fft.rfft2(rng.standard_normal((bank_size, ny, nx), dtype=np.float32), axes=(1, 2)) * nps,
            s=(ny, nx),
            axes=(1, 2),
        ).astype(np.float32)
        bank *= np.float32(acq.noise_hu / max(float(bank.std()), 1e-6))
        picks = rng.integers(bank_size, size=hu.shape[0])
        shifts = rng.integers(0, max(ny, nx), size=(hu.shape[0], 2))
        flips = rng.integers(0, 2, size=(hu.shape[0], 2)).astype(bool)
        for k in range(hu.shape[0]):
            slab = np.roll(bank[picks[k]], tuple(shifts[k]), axis=(0, 1))
            out[k] += slab[:: -1 if flips[k, 0] else 1, :: -1 if flips[k, 1] else 1]
    return out


def generate(spec: PhantomSpec, *, fast: bool = False) -> Phantom:
    """Generate the phantom described by ``spec`` (deterministic).

    Args:
        spec: class, severity, seed and acquisition.
        fast: fewer sub-slices for the slice profile (at most 2); meant for
            training-sized grids (matrix 128-192, 2-3 mm pixels).

    Example:
        >>> acq = Acquisition(matrix=64, pixel_spacing_mm=6.0, slice_thickness_mm=6.0)
        >>> generate(PhantomSpec("normal", 0.0, seed=3, acquisition=acq), fast=True).lesion_percent
        0.0
    """
    acq = spec.acquisition
    anat = sample_anatomy(spec.seed, patient_scale=acq.patient_scale)
    step = max(1.5 * acq.pixel_spacing_mm, 1.5)
    n_sub = int(np.clip(np.ceil(acq.slice_thickness_mm / step - 1e-6), 1, 2 if fast else 4))
    grid, fine = _grid(spec, anat.height, anat.offset, n_sub)
    img = render_anatomy(
        anat,
        fine,
        np.random.default_rng([spec.seed, 8, n_sub]),
        z_align=n_sub,
        enhance=enhancement(anat, acq.contrast, acq.contrast_level),
        arms=acq.arms,
    )
    pattern = sample_pattern(spec.label, spec.seed)
    lesions = render_lesions(anat, fine, img, pattern, spec.severity)

    lung_hu = apply_confounders(anat, fine, img, img.parenchyma)
    if lesions is not None:
        lung_hu += lesions.fraction * (lesions.hu - lung_hu)
    for frac, value in ((img.vessel, img.vessel_hu), (img.wall, 30.0), (img.lumen, -1000.0)):
        lung_hu += frac * (np.float32(value) - lung_hu)
    aerated = img.fissure if lesions is None else img.fissure * (1 - lesions.fraction)
    lung_hu += aerated * (np.float32(0.0) - lung_hu)
    np.maximum(lung_hu, -1000.0, out=lung_hu)
    hu = img.hu
    hu[img.box] += img.lung_weight * lung_hu

    def collapse(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0] // n_sub, n_sub, *a.shape[1:]).mean(axis=1) if n_sub > 1 else a

    hu = collapse(hu)
    lung_frac = collapse(img.lung_weight)
    lung_mask = np.zeros(grid.shape, np.uint8)
    box = (slice(img.box[0].start // n_sub, img.box[0].stop // n_sub), img.box[1], img.box[2])
    inside = lung_frac >= 0.5
    right = (grid.x[box[2]] < 0)[None, None, :]
    lung_mask[box] = np.where(inside, np.where(right, LungLabel.RIGHT, LungLabel.LEFT), 0)
    lesion_mask = np.zeros(grid.shape, np.uint8)
    if lesions is not None:
        les = collapse(lesions.fraction)
        cons = collapse(lesions.fraction * lesions.consolidation)
        label = np.where(cons >= 0.5 * les, LesionLabel.CONSOLIDATION, LesionLabel.GROUND_GLASS)
        lesion_mask[box] = np.where(inside & (les >= 0.5), label, 0)
    tissue = img.tissue[n_sub // 2 :: n_sub]

    artifact_rng = np.random.default_rng([spec.seed, 11])
    add_motion(hu, artifact_rng, strength=acq.motion, pixel_mm=acq.pixel_spacing_mm)
    add_streaks(hu, artifact_rng, strength=acq.streaks, pixel_mm=acq.pixel_spacing_mm)
    hu = _kernel_and_noise(hu, acq, np.random.default_rng([spec.seed, 9]))
    hu_int = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    volume = Volume(
        hu_int,
        spacing_mm=(acq.slice_thickness_mm, acq.pixel_spacing_mm, acq.pixel_spacing_mm),
        origin_mm=(float(grid.x[0]), float(grid.y[0]), float(grid.z[0])),
        direction=np.eye(3),
        series_uid=phantom_uid(spec, "series"),
        study_uid=phantom_uid(spec, "study"),
        header=_header(spec, anat.female),
    )
    return Phantom(volume, lung_mask, lesion_mask, spec, tissue, pattern.kind)


# --- identity and header -----------------------------------------------------------------------------

_VENDORS = ("SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "TOSHIBA")
_MODELS = {
    "SIEMENS": "SOMATOM Definition AS",
    "GE MEDICAL SYSTEMS": "Revolution CT",
    "Philips": "Ingenuity CT",
    "TOSHIBA": "Aquilion ONE",
}
_FIRST = ("ALEX", "SAM", "ROBIN", "KIM", "NOOR", "JO", "LEE", "ARI", "MIKA", "TONI", "DANA", "REMY")
_LAST = ("PHANTOM", "SYNTHE", "MODEL", "VOXEL", "TESTCASE", "SAMPLE", "DUMMY", "SIMUL")


def kernel_name(vendor: str, sharpness: float) -> str:
    """A vendor-style ConvolutionKernel name for ``sharpness`` in [0, 1].

    Example:
        >>> kernel_name("SIEMENS", 0.2), kernel_name("GE MEDICAL SYSTEMS", 0.9)
        ('B31f', 'BONEPLUS')
    """
    band = int(np.digitize(sharpness, [0.3, 0.6, 0.85]))
    if vendor == "SIEMENS":
        return f"B{round(20 + 55 * sharpness)}f"
    if vendor == "GE MEDICAL SYSTEMS":
        return ("SOFT", "STANDARD", "LUNG", "BONEPLUS")[band]
    if vendor == "Philips":
        return ("B", "C", "L", "YC")[band]
    return ("FC08", "FC18", "FC52", "FC86")[band]


def phantom_uid(spec: PhantomSpec, what: str) -> str:
    """The DICOM UID of a phantom's ``what`` (``"study"``, ``"series"``, ``"frame"``, ...): same spec, same UID."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[f"medai-synthetic:{what}:{spec!r}"]))


def _identity(seed: int) -> tuple[str, str, str, str]:
    rng = np.random.default_rng([seed, 7])
    name = f"{_LAST[int(rng.integers(len(_LAST)))]}^{_FIRST[int(rng.integers(len(_FIRST)))]}"
    vendor = _VENDORS[int(rng.integers(len(_VENDORS)))]
    return name, f"SYN{seed % 10**9:09d}", f"{int(rng.integers(18, 90)):03d}Y", vendor


def _header(spec: PhantomSpec, female: bool) -> dict[str, object]:
    name, patient_id, age, vendor = _identity(spec.seed)
    acq = spec.acquisition
    kernel = kernel_name(vendor, acq.kernel_sharpness)
    return {
        "Modality": "CT",
        "Manufacturer": vendor,
        "ManufacturerModelName": _MODELS[vendor],
        "ConvolutionKernel": kernel,
        "SliceThickness": acq.slice_thickness_mm,
        "KVP": 120,
        "XRayTubeCurrent": round(300 / max(acq.noise_hu, 3) ** 2 * 144),
        "PatientName": name,
        "PatientID": patient_id,
        "PatientSex": "F" if female else "M",
        "PatientAge": age,
        "BodyPartExamined": "CHEST",
        "PatientPosition": "FFS",
        "StudyDescription": f"CT CHEST {'WITH' if acq.contrast != 'none' else 'WITHOUT'} CONTRAST (SYNTHETIC PHANTOM)",
        "SeriesDescription": f"Chest {acq.slice_thickness_mm:g}mm {kernel}",
        "ImageComments": "Synthetic phantom generated by medai; not patient data; not for clinical use.",
    }
