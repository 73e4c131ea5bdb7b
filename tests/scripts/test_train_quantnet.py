"""scripts/train_quantnet.py: the dense-consolidation augmentation moves consolidation only, and only when asked."""

from __future__ import annotations

import numpy as np

from tests.conftest import load_script


def _fractions(shape: tuple[int, int, int]) -> np.ndarray:
    """Four class fractions (outside, clear lung, ground glass, consolidation): a lung with a consolidated half
    and a block of ground glass, one voxel layer consolidated only by half (a block mean at the lesion's edge)."""
    frac = np.zeros((4, *shape), np.float32)
    frac[0] = 1.0
    regions = (  # (rows, columns) of every slice and their class fractions; each region overwrites the ones before
        ((slice(2, 14), slice(2, 14)), {1: 1.0}),  # the lung
        ((slice(2, 14), slice(8, 14)), {3: 1.0}),  # its consolidated half
        ((slice(2, 14), slice(7, 8)), {1: 0.5, 3: 0.5}),  # the consolidation's edge
        ((slice(2, 5), slice(2, 5)), {2: 1.0}),  # ground glass
    )
    for (rows, cols), classes in regions:
        frac[:, :, rows, cols] = 0.0
        for k, value in classes.items():
            frac[k, :, rows, cols] = value
    return frac


def test_dense_consolidation_raises_consolidated_voxels_alone_in_proportion():
    script = load_script("train_quantnet")
    shape = (6, 16, 16)
    frac = _fractions(shape)
    hu = np.full(shape, -850.0, np.float32)
    hu[frac[0] == 1] = 40.0
    hu[frac[3] == 1] = -20.0
    hu[frac[2] == 1] = -600.0

    shifts = []
    for seed in range(40):
        # The augmented crop must equal the crop whose consolidation was raised by hand first (each voxel by
        # delta times its consolidated fraction, nothing else), then put through the other steps with the
        # same random stream.
        rng = np.random.default_rng(seed)
        apply = rng.random() < 0.5
        delta = np.float32(rng.uniform(0.0, 60.0)) if apply else np.float32(0.0)
        rng_aug = np.random.default_rng(seed)
        out, out_frac = script._augment(hu, frac, 3.0, rng_aug, dense_hu=60.0)
        rng_ref = np.random.default_rng(seed)
        rng_ref.random()
        if apply:
            rng_ref.uniform(0.0, 60.0)
        ref, ref_frac = script._augment(hu + delta * frac[3], frac, 3.0, rng_ref, dense_hu=0.0)
        np.testing.assert_allclose(out, ref, atol=1e-3)
        np.testing.assert_array_equal(out_frac, ref_frac)
        shifts.append(float(delta))
    assert 10 <= sum(s > 0 for s in shifts) <= 30  # about half of the crops
    assert max(shifts) > 30  # and up to the asked range


def test_without_the_option_the_augmentation_draws_as_before():
    """Runs 1-8 of the shipped head are reproducible: with ``dense_hu`` 0 no extra random number is drawn."""
    script = load_script("train_quantnet")
    shape = (6, 16, 16)
    frac = _fractions(shape)
    hu = np.random.default_rng(0).normal(-500, 300, shape).astype(np.float32)
    a = script._augment(hu, frac, 3.0, np.random.default_rng(7))
    b = script._augment(hu, frac, 3.0, np.random.default_rng(7), dense_hu=0.0)
    np.testing.assert_array_equal(a[0], b[0])
    rng = np.random.default_rng(7)
    script._augment(hu, frac, 3.0, rng)
    rng_dense = np.random.default_rng(7)
    script._augment(hu, frac, 3.0, rng_dense, dense_hu=60.0)
    assert rng.random() != rng_dense.random()  # the option does draw: the streams part
