"""Per-customer predictions: P(alive), expected purchases, next purchase and expected value.

``models`` holds the buy-till-you-die models (MBG/NBD, BG/NBD, Pareto/NBD, Gamma-Gamma) and their fits;
``scoring`` turns a fit into feature columns in days; ``backtest`` compares predictions with what happened.
"""

from rules.predict.models import COUNT_MODELS, MODELS, Fit, FitError
from rules.predict.scoring import PREDICTION_FEATURES, PortalModel, PredictionSettings

__all__ = ["COUNT_MODELS", "MODELS", "Fit", "FitError", "PREDICTION_FEATURES", "PortalModel", "PredictionSettings"]
