"""Predictors: meta-learned latency predictors with few-shot calibration (and the accuracy predictor).

Latency (:mod:`fitplan.predictors.latency`): a Gaussian prior over layer-wise per-device cost tables,
meta-trained on the shipped HELP/HW-NAS-Bench devices, adapted to a new device from ~10 measured samples and
blended with a Bayesian model average of rescaled source devices (:mod:`fitplan.predictors.basis`).
"""
from fitplan.predictors.latency import (
    AdaptedPredictor,
    LatencyPredictor,
    calibrate_profile,
    load_profile_predictor,
    parse_samples,
    predictor_for_device,
)

# accuracy predictor exports: `from fitplan.predictors.accuracy import ...` (added by its owner)

__all__ = [
    "AdaptedPredictor",
    "LatencyPredictor",
    "calibrate_profile",
    "load_profile_predictor",
    "parse_samples",
    "predictor_for_device",
]
