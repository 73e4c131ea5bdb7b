"""Scanner artifacts of the phantom world: motion (doubling and blur) and streaks from dense objects.

Real chest CTs carry both: breathing or cardiac motion doubles and blurs the vessels and the
diaphragm over a few slices, and dense contrast in the superior vena cava, the arms at the patient's
side or metal send bright and dark streaks across the lungs. Neither is disease; a model that has never
seen them may call them so. Applied by :func:`medai.phantoms.synthetic.generate` before the
reconstruction kernel and noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["add_motion", "add_streaks"]


def add_motion(hu: np.ndarray, rng: np.random.Generator, *, strength: float, pixel_mm: float) -> None:
    """Blend a contiguous slab of slices with a shifted copy of itself (motion doubling), in place.

    Args:
        hu: float32 ``(z, y, x)`` HU, modified in place.
        rng: the phantom's random stream.
        strength: 0 (none) .. 1 (strong): blend weight up to 0.5 and shift up to 7 mm.
        pixel_mm: in-plane pixel size.

    Example:
        >>> a = np.zeros((10, 32, 32), np.float32); a[:, 10:20, 10:20] = 100
        >>> add_motion(a, np.random.default_rng(0), strength=1.0, pixel_mm=1.0)
        >>> bool((a[:, 10:20, 10:20] < 100).any())
        True
    """
    if strength <= 0 or hu.shape[0] < 2:
        return
    n = hu.shape[0]
    length = max(2, int(n * rng.uniform(0.2, 0.6)))
    start = int(rng.integers(0, max(1, n - length)))
    shift_mm = rng.uniform(2.0, 7.0) * strength
    angle = rng.uniform(0, 2 * np.pi)
    dy, dx = shift_mm * np.sin(angle) / pixel_mm, shift_mm * np.cos(angle) / pixel_mm
    weight = np.float32(rng.uniform(0.2, 0.5) * strength)
    slab = hu[start : start + length]
    moved = ndimage.shift(slab, (0, dy, dx), order=1, mode="nearest")
    slab += weight * (moved - slab)


def add_streaks(hu: np.ndarray, rng: np.random.Generator, *, strength: float, pixel_mm: float) -> None:
    """Add streaks radiating from the densest object of each slice (contrast, bone, arms), in place.

    Each streak is a thin bright or dark ray (one pixel wide) along a random direction through the source,
    fading with distance; the same rays persist over a run of slices, as they do behind a dense vessel.

    Example:
        >>> a = np.zeros((4, 64, 64), np.float32); a[:, 30:34, 30:34] = 1500
        >>> before = a.copy(); add_streaks(a, np.random.default_rng(1), strength=1.0, pixel_mm=1.0)
        >>> bool(np.abs(a - before)[:, :, :25].max() > 5)
        True
    """
    if strength <= 0:
        return
    ny, nx = hu.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    n_rays = int(rng.integers(6, 16))
    angles = rng.uniform(0, np.pi, n_rays).astype(np.float32)
    amps = (rng.choice([-1.0, 1.0], n_rays) * rng.uniform(40, 160, n_rays) * strength).astype(np.float32)
    decay_px = np.float32(rng.uniform(60, 160) / pixel_mm)
    for k in range(hu.shape[0]):
        plane = hu[k]
        peak = float(plane.max())
        if peak < 250:  # nothing dense enough to streak
            continue
        sy, sx = np.unravel_index(int(np.argmax(plane)), plane.shape)
        dy, dx = yy - np.float32(sy), xx - np.float32(sx)
        r = np.sqrt(dy * dy + dx * dx)
        fade = np.exp(-r / decay_px) * np.float32(min(1.0, (peak - 250) / 600))
        for angle, amp in zip(angles, amps, strict=True):
            across = np.abs(dx * np.sin(angle) - dy * np.cos(angle))
            plane += amp * np.clip(1 - across, 0, 1) * fade
