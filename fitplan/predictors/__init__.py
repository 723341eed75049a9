"""Predictors: meta-learned latency predictors with few-shot calibration (and the accuracy predictor).

Latency (:mod:`fitplan.predictors.latency`): a Gaussian prior over layer-wise per-device cost tables,
meta-trained on the shipped HELP/HW-NAS-Bench devices, adapted to a new device from ~10 measured samples and
blended with a Bayesian model average of rescaled source devices (:mod:`fitplan.predictors.basis`).
Analytic (:mod:`fitplan.predictors.analytic`): :class:`CostModelPredictor`, a few-shot per-unit cost model
for any registered space that prices each compression unit by its own bit-width (fp32 / int8 / mixed from
one fit), anchored where it helps on the model of a machine fitplan ships measurements of
(:func:`source_prior`, :func:`fit_with_source_prior`). :func:`calibrate_profile` picks per device among
them and their log-space average (:class:`EnsemblePredictor`).
"""
from fitplan.predictors.analytic import CostModelHyper, CostModelPredictor, fit_with_source_prior, source_prior
from fitplan.predictors.ensemble import EnsemblePredictor
from fitplan.predictors.latency import (
    AdaptedPredictor,
    LatencyPredictor,
    calibrate_predictor,
    calibrate_profile,
    load_profile_predictor,
    parse_samples,
    predictor_for_device,
)

# accuracy predictor exports: `from fitplan.predictors.accuracy import ...` (added by its owner)

__all__ = [
    "AdaptedPredictor",
    "CostModelHyper",
    "CostModelPredictor",
    "EnsemblePredictor",
    "LatencyPredictor",
    "calibrate_predictor",
    "calibrate_profile",
    "fit_with_source_prior",
    "load_profile_predictor",
    "parse_samples",
    "predictor_for_device",
    "source_prior",
]
