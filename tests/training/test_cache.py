"""medai.training.cache: preprocessed inputs keyed by the source and the preprocessing parameters."""

import numpy as np

from medai.preprocess import PreprocessParams, to_model_input
from medai.training.cache import InputCache, volume_fingerprint
from medai.volume import Volume

PARAMS = PreprocessParams(grid_shape=(32, 32, 48))


def chest(shape=(20, 48, 48)) -> Volume:
    rng = np.random.default_rng(0)
    hu = np.full(shape, -1000, np.int16)
    hu[:, 6:42, 4:44] = 40
    hu[:, 10:38, 8:22] = -850
    hu[:, 10:38, 26:40] = -850
    return Volume(hu + rng.integers(-5, 5, shape).astype(np.int16), spacing_mm=(5.0, 2.5, 2.5))


def test_cache_hits_and_keys(tmp_path):
    vol = chest()
    cache = InputCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return to_model_input(vol, PARAMS).array

    source = volume_fingerprint(vol)
    a = cache.get_or_compute(source, PARAMS, compute)
    b = cache.get_or_compute(source, PARAMS, compute)
    np.testing.assert_array_equal(a, b)
    assert len(calls) == 1
    cache.get_or_compute(source, PreprocessParams(grid_shape=(16, 16, 16)), compute)
    assert len(calls) == 2
    assert volume_fingerprint(vol.with_array(vol.hu + 1)) != source
