"""An independent phantom family: synthetic chest CT with exact ground truth, for out-of-distribution tests only.

Written separately from the training generator (:mod:`medai.phantoms.synthetic`
and its modules) with different methods, so that a model trained there can be
measured on a world it never saw. Never train on it.

* :mod:`.spec`: :class:`IndependentSpec` and :func:`sample_independent_spec` (every drawn factor).
* :mod:`.patient`: the shape model (nested star-shaped contours, domes, fissure height fields).
* :mod:`.organs`, :mod:`.shapes`, :mod:`.voxelize`: organs as swept tubes and deformed blobs, labelled per plane.
* :mod:`.coarse`, :mod:`.lungmap`: the planning grid and what it knows about the lungs.
* :mod:`.trees`, :mod:`.twigs`, :mod:`.raster`: space-colonised airway and vessel trees, random-walk twigs, voxels.
* :mod:`.parenchyma`, :mod:`.lesions`: lung density, fissures, emphysema; pneumonia as ranked fields.
* :mod:`.scanner`, :mod:`.header`, :mod:`.phantom`: slice profile, kernels, noise, artifacts, header, assembly.

Example:
    >>> import numpy as np
    >>> spec = sample_independent_spec(np.random.default_rng(0), label="covid19", matrix=160)
    >>> phantom = generate_independent(spec)  # doctest: +SKIP
    >>> round(phantom.lesion_percent, 1)  # doctest: +SKIP
"""

from medai.phantoms.independent.phantom import IndependentPhantom, generate_independent
from medai.phantoms.independent.spec import IndependentSpec, sample_independent_spec

__all__ = ["IndependentPhantom", "IndependentSpec", "generate_independent", "sample_independent_spec"]
