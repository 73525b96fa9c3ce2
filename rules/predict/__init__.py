"""Per-customer predictions: P(alive), expected purchases, next purchase and expected value.

``models`` holds the buy-till-you-die models (MBG/NBD, BG/NBD, Pareto/NBD, Gamma-Gamma) and their fits;
``scoring`` turns a fit into feature columns in days; ``backtest`` compares predictions with what happened.
"""

from typing import Any

_FROM = {"COUNT_MODELS": "models", "MODELS": "models", "Fit": "models", "FitError": "models",
         "PREDICTION_FEATURES": "names", "PortalModel": "scoring", "PredictionSettings": "scoring"}


def __getattr__(name: str) -> Any:
    """The names below, imported on first use: importing ``rules.predict.names`` must not load scipy."""
    if name in _FROM:
        import importlib

        return getattr(importlib.import_module(f"rules.predict.{_FROM[name]}"), name)
    raise AttributeError(f"module 'rules.predict' has no attribute {name!r}")


__all__ = ["COUNT_MODELS", "MODELS", "Fit", "FitError", "PREDICTION_FEATURES", "PortalModel", "PredictionSettings"]
