"""medai: chest-CT COVID-19 triage pipeline.

Research and triage support only; not a medical device and not for diagnosis.
"""

# medai.dicom exports (find_series, load_series, select_series, ...) are added here by the ingestion module
from medai.errors import InvalidSeriesError, MedaiError, ModelError, NoSeriesError, QCReason
from medai.volume import Volume

__version__ = "0.1.0"

INTENDED_USE = "Research use only. Not a medical device; not for diagnosis."

__all__ = [
    "INTENDED_USE",
    "InvalidSeriesError",
    "MedaiError",
    "ModelError",
    "NoSeriesError",
    "QCReason",
    "Volume",
    "__version__",
]
