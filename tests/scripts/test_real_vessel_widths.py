"""scripts/real_vessel_widths.py: the width of each enhanced vessel in the lungs' envelope."""

from __future__ import annotations

import numpy as np

from tests.conftest import load_script


def test_each_vessel_voxel_gets_its_vessels_width_and_the_hilum_is_in_the_envelope() -> None:
    script = load_script("real_vessel_widths")
    hu = np.full((4, 160, 160), -850.0, np.float32)
    lungs = np.zeros(hu.shape, bool)
    lungs[:, 50:110, 50:110] = True  # far enough from the edges for the 30-pixel closing
    yy, xx = np.mgrid[:160, :160]
    wide = np.hypot(yy - 80, xx - 70) <= 10  # a vessel 20 px (10 mm) wide, left out of the lungs like a hilum's
    thin = (np.abs(yy - 80) <= 2) & (xx >= 90) & (xx < 105)  # one 5 px (2.5 mm) wide, inside them
    hu[:, wide | thin] = 250.0
    lungs[:, wide] = False
    width = script.vessel_widths(hu, lungs, (2.5, 0.5, 0.5), blood_hu=100.0, envelope_mm=15.0, window=9)
    assert 9.0 <= width[1, 80, 70] <= 11.0  # the hole in the lungs is inside their envelope
    assert 2.0 <= width[1, 80, 97] <= 3.5
    assert (width[:, ~(wide | thin)] == 0).all()
