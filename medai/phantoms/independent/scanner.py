"""The scanner: slice profile, reconstruction kernel (resolution and noise texture), dose, motion and streaks.

* **Slice profile**: a reconstructed slice of nominal thickness ``T`` averages
  the fine planes with the weights of a rectangle of width ``T`` convolved
  with a Gaussian (the helical interpolation), so its tails reach the
  neighbours. Breathing during the scan is a second, shifted profile mixed
  into the slices of one stretch of the scan: structures there are doubled.
* **Kernel**: one radial frequency response per kernel family (smooth to
  edge-enhancing). The image is filtered by it times the detector blur; the
  noise power spectrum is ``f * K(f)**2`` (the ramp filter of filtered back
  projection) damped at high frequencies by iterative reconstruction and
  stretched along the patient's long axis of the slice (photons crossing the
  wide direction are fewer). Noise fields come from a small bank per case,
  each slice mixing two of them under random shifts and flips, so no two
  slices repeat while only a dozen FFTs are paid.
* **Dose**: the noise level scales with the slice's water-equivalent
  diameter (weakly with tube-current modulation, strongly without) and falls
  off toward the edge of the body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import fft, special

__all__ = ["Kernel", "NoiseBank", "slice_weights"]

_KERNELS = {
    # (cut-off frequency 1/mm, shape power, enhancement, enhancement frequency 1/mm)
    "soft": (0.34, 2.0, 0.0, 0.3),
    "standard": (0.46, 2.0, 0.12, 0.45),
    "sharp": (0.72, 2.5, 0.65, 0.6),
    "bone": (0.95, 3.0, 0.95, 0.7),
}


def slice_weights(
    z_out: np.ndarray,
    z_fine: np.ndarray,
    *,
    thickness_mm: float,
    shift_mm: np.ndarray | None = None,
    mix: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights of the fine planes in each reconstructed slice.

    Args:
        z_out: slice centres (mm, increasing).
        z_fine: fine plane centres (mm, evenly spaced, increasing).
        thickness_mm: nominal slice thickness (FWHM of the profile).
        shift_mm: per slice, the displacement of a second (motion) profile.
        mix: per slice, the weight (0..1) of the second profile.

    Returns:
        Per slice, the indices of the fine planes it reads and their weights (summing to 1).
    """
    dz = float(z_fine[1] - z_fine[0])
    sigma = 0.17 * thickness_mm + 0.15
    half = 0.5 * thickness_mm
    sub = (np.arange(5) - 2.0) * dz / 5.0

    def profile(center: float) -> tuple[np.ndarray, np.ndarray]:
        lo = np.searchsorted(z_fine, center - half - 4 * sigma - dz)
        hi = np.searchsorted(z_fine, center + half + 4 * sigma + dz)
        idx = np.arange(max(int(lo), 0), min(int(hi), len(z_fine)))
        u = z_fine[idx, None] + sub[None, :] - center
        s = special.ndtr((u + half) / sigma) - special.ndtr((u - half) / sigma)
        return idx, s.sum(axis=1)

    out = []
    for k, center in enumerate(z_out):
        idx, w = profile(float(center))
        if mix is not None and shift_mm is not None and mix[k] > 0:
            idx2, w2 = profile(float(center + shift_mm[k]))
            merged = np.union1d(idx, idx2)
            total = np.zeros(len(merged))
            total[np.searchsorted(merged, idx)] += (1.0 - mix[k]) * w / w.sum()
            total[np.searchsorted(merged, idx2)] += mix[k] * w2 / w2.sum()
            idx, w = merged, total
        keep = w > 5e-3 * w.max()  # tails below half a percent change nothing visible
        idx, w = idx[keep], w[keep]
        out.append((idx, (w / w.sum()).astype(np.float32)))
    return out


@dataclass
class Kernel:
    """A reconstruction kernel on one image grid: its image filter and its noise filter.

    Args:
        family: ``"soft"``, ``"standard"``, ``"sharp"`` or ``"bone"``.
        shape: image ``(rows, cols)``.
        pixel_mm: in-plane spacing.
        iterative: iterative-reconstruction strength 0..1 (damps fine noise, blotchier texture).
        stretch: anisotropy of the noise (0: isotropic; > 0 streakier along the rows' direction).
        scale: multiplies the kernel's frequencies (vendor-to-vendor variation).
    """

    family: str
    shape: tuple[int, int]
    pixel_mm: float
    iterative: float = 0.0
    stretch: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.family not in _KERNELS:
            raise ValueError(f"family must be one of {tuple(_KERNELS)}, not {self.family!r}")
        rows, cols = self.shape
        fy = np.fft.fftfreq(rows, self.pixel_mm)[:, None]
        fx = np.fft.rfftfreq(cols, self.pixel_mm)[None, :]
        f = np.sqrt(fx * fx + fy * fy)
        cut, power, boost, f_boost = _KERNELS[self.family]
        cut *= self.scale
        k = (1.0 + boost * (f / f_boost) ** 2) * np.exp(-((f / cut) ** power))
        detector = np.exp(-2.0 * math.pi**2 * 0.32**2 * f * f)
        self.mtf = (k * detector).astype(np.float32)
        nps = f * (k * np.exp(-2.0 * math.pi**2 * 0.22**2 * f * f)) ** 2
        nps *= 1.0 - self.iterative * (1.0 - np.exp(-((f / 0.22) ** 2)))
        nps += 0.02 * nps.max() * self.iterative * np.exp(-((f / 0.08) ** 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            aniso = np.where(f > 0, (fy * fy - fx * fx) / (f * f), 0.0)
        nps *= 1.0 + self.stretch * aniso
        self.noise_filter = np.sqrt(np.maximum(nps, 0.0)).astype(np.float32)

    def blur(self, image: np.ndarray) -> np.ndarray:
        """``image`` filtered by the kernel and detector (edges ring slightly for sharp kernels)."""
        spectrum = fft.rfft2(image, workers=1)
        spectrum *= self.mtf
        return fft.irfft2(spectrum, s=image.shape, workers=1).astype(np.float32)


class NoiseBank:
    """Unit-variance noise with a kernel's spectrum, drawn per slice from a few precomputed fields.

    Args:
        kernel: the kernel whose noise filter shapes the fields.
        rng: the case's noise generator.
        size: number of fields in the bank.
    """

    def __init__(self, kernel: Kernel, rng: np.random.Generator, size: int = 10) -> None:
        rows, cols = kernel.shape
        self.rng = rng
        fields = []
        for _ in range(size):
            white = rng.standard_normal((rows, cols), dtype=np.float32)
            field = fft.irfft2(fft.rfft2(white, workers=1) * kernel.noise_filter, s=(rows, cols), workers=1)
            field -= field.mean()
            fields.append((field / max(float(field.std()), 1e-9)).astype(np.float32))
        self.fields = fields

    def draw(self) -> np.ndarray:
        """A fresh-looking unit-variance noise field."""
        rng = self.rng
        i, j = rng.choice(len(self.fields), size=2, replace=False)
        a = float(rng.uniform(0.0, 2.0 * math.pi))
        out = np.zeros_like(self.fields[0])
        for idx, weight in ((i, math.cos(a)), (j, math.sin(a))):
            f = self.fields[idx]
            f = np.roll(f, (int(rng.integers(f.shape[0])), int(rng.integers(f.shape[1]))), axis=(0, 1))
            if rng.random() < 0.5:
                f = f[:, ::-1]
            if rng.random() < 0.5:
                f = f[::-1, :]
            out += np.float32(weight) * f
        return out
