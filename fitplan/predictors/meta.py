"""Meta-learned Gaussian prior over per-device latency cost tables, and its few-shot posterior.

Model. A device is a cost table ``c`` over the layer-choice features of :mod:`fitplan.predictors.features`:
``lat(a) ≈ s · φ(a)·c`` where ``s`` is the device's scale (ms) and ``c`` is normalised so that the mean
prediction over the space's reference pool of architectures is 1. Across devices, normalised tables are
modelled as Gaussian::

    c ~ N(μ, Σ),   Σ = γ² · Cov(source tables) + A diag(σ_A²) Aᵀ + σ_b² · e eᵀ + τ² · diag(d²)

* ``μ``, ``Cov`` — mean and covariance of the source devices' normalised tables (each fitted on that device's
  5000 measured archs, relative-error ridge). This is what is *meta-learned* from the source devices.
* ``A`` — analytic cost tables (MACs, depthwise MACs, params, activation traffic, kernel launches), so that
  devices unlike every source device (ASIC/FPGA simulators, edge TPUs) stay expressible. The two tables that
  bound a cost model at the ends of the roofline (:data:`BOUND_TABLES`: MACs for a compute-bound device,
  kernel launches for one bound by fixed per-kernel overhead) get their own, wide scale ``σ_r``; the others
  ``σ_a``. Why: with one common scale, a device of a class no source belongs to (a batch-1 GPU whose table
  is nearly flat, ~0.4 per layer, when only CPUs and phones are sources) was shrunk back toward the sources'
  MAC-heavy mean; a wide ``σ_r`` lets ten samples move the table to either end (fbnet leave-one-class-out,
  noise-free targets, meta model alone, N=10: 0.912 -> 0.949; same-class devices unchanged).
* ``e`` — the constant feature (fixed per-inference overhead); ``d`` — typical magnitude per feature, giving a
  free per-layer residual correction when the samples ask for it. ``G`` — per-layer / per-op group
  directions (tuned to σ_g = 0: with 10 samples they cost more than they help; kept for larger N).
* ``γ, σ_a, σ_r, σ_b, τ`` and the relative noise ``σ_n`` are hyper-parameters chosen on meta-validation devices
  (``benchmarks/predictor_fewshot.py --tune``), not on the devices that are reported as held out.

Outliers. Real measurements are not Gaussian around the cost table: phones switch frequency between runs
(essential_ph_1's residuals are trimodal at about -18 %, 0 and +18 %) and samsung_s7 logged 5 % of its
archs > 50 % too slow, so one of ten samples is often far off, and the Gaussian posterior bends the whole
table toward it. :func:`outlier_variance` therefore raises the noise variance of each sample whose
*leave-one-out* residual (the other samples' prediction of it, which its own value cannot pull) lies more
than ``clip`` predictive standard deviations away, just enough to bring it to ``clip`` (a Huber-type
down-weighting, iterated). With fewer than ``robust_min_samples`` (4) samples it is off: two others
cannot tell an outlier from a device unlike the prior. Measured targets gain where devices are noisy (fbnet
leave-one-device-out, N=10: essential_ph_1 0.668 -> 0.687, samsung_s7 0.693 -> 0.718), one sample measured
2x too slow no longer wrecks the fit (``benchmarks/predictor_fewshot.py --corrupt 2``; the measured basis
weights the samples alike, :meth:`MetaPrior.posterior`), and noise-free targets (``--target clean``)
move by at most 0.003.

Wide. The meta-train devices are GPUs, CPUs and phones, and on them narrow scales for the analytic tables
other than :data:`BOUND_TABLES` score best. An accelerator (HELP's Eyeriss and FPGA are held out) can be
driven by exactly those tables -- depthwise convolutions mapped badly onto a PE array, weight or activation
traffic -- which no source shows. So each device's posterior chooses, by marginal likelihood, between the
tuned scales and all analytic tables at ``sigma_wide`` (:meth:`HyperParams.candidates`). On the real devices
this changes nothing measurable (fbnet, every protocol and target, N=5/10/20: within 0.001); on synthetic
accelerators (``benchmarks/predictor_synthetic.py``: per-convolution roofline with PE-array tiling,
depthwise inefficiency and per-convolution overhead) it takes the meta model from 0.945 to 0.972 mean
Spearman at N=10.

Tiles. Accelerators process channels in fixed blocks (PE and systolic arrays; FPGA designs unroll ``Tm``
output x ``Tn`` input channels and take ``ceil(M/Tm)·ceil(N/Tn)`` steps per tile), so a layer whose channel
count is not a multiple of the block runs as if it had the rounded-up count: a per-layer factor that none of
the analytic tables carries and that ten samples cannot learn layer by layer (14 per-stage directions were
never chosen, docs/DEVELOPING.md). With ``sigma_tile`` > 0 a third candidate adds to the wide prior the MACs
with channel counts rounded up to 16, 32 and 64 (:data:`~fitplan.predictors.features.TILED_NAMES`,
pointwise and depthwise apart) at that scale. On the generated accelerators that tile channels (tile sizes
drawn from 8 to 64 per dimension, not only the tables' three) the meta model went from 0.972 to 0.982 mean
Spearman at N=10, its lowest device from 0.901 to 0.963 (N=20: 0.985 -> 0.995; before the odds below); on
generated accelerators that map kernel rows and output rows instead (row-stationary, Eyeriss-like) and on
every real device (fbnet and ofa_mbv3, every protocol and target) nothing changes: the candidate is not chosen
there. A third candidate rather than part of the wide one, because the six extra directions cost the wide
prior evidence where it needs none of them (as part of it: N=5 0.925 -> 0.922, row-stationary 0.971 -> 0.969).

Odds. With equal prior odds the evidence kept the tuned prior for most generated accelerators whose samples
were HELP's 10 reference archs: its log evidence was up to 3 nats higher, yet the wide candidates ranked them
0.04-0.05 better. On real devices that do not need them the wide candidates pay a steady Occam factor of
3-4 nats, so prior log-odds of ``unlike_log_odds`` = 2 for every candidate but the tuned one leave those
devices on the tuned prior. The odds apply only from ``unlike_min_samples`` (8) samples on and while the tuned
fit down-weights no sample below ``unlike_min_weight`` (0.5): noisy phone samples (frequency states) let
the wide prior bend to the noise (fbnet essential_ph_1 / samsung_s7 lost up to 0.16 Spearman where the odds
switched them), and with 5 samples the odds cost measured devices 0.007-0.011. Generated accelerators,
HELP's reference archs as samples: channel-tiling 0.959 -> 0.979 (lowest device 0.896 -> 0.948),
row-stationary 0.965 -> 0.979 (0.922 -> 0.953); 10 random samples 0.981 -> 0.985 and 0.971 -> 0.975. Real
devices (fbnet and ofa_mbv3, every protocol and target, N=5/10/20 and reference archs): unchanged but for
fbnet leave-one-class-out noise-free N=10, 0.945 -> 0.944. 1.5 / 2 / 2.5 were tried: 1.5 left every real figure
unchanged but the lowest generated device at 0.905; 2.5 took the leave-one-class-out noise-free lowest device
below 0.90 (0.904 -> 0.889).

Adaptation with ``N`` samples is Bayesian linear regression in closed form (an ``N×N`` solve), so it takes
milliseconds and the result is again a plain table: prediction is one matrix-vector product.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from fitplan.predictors.features import ANALYTIC_NAMES


#: Analytic tables at the two ends of the roofline (compute bound, per-kernel overhead bound); their prior scale
#: is ``HyperParams.sigma_r`` (module docstring).
BOUND_TABLES = ("macs", "kernels")


@dataclass
class HyperParams:
    """Prior/noise scales (see module docstring). Defaults are the values tuned on meta-valid devices.

    ``clip`` (standardised leave-one-out residual beyond which a sample's noise is raised; 0 = off) and
    ``robust_min_samples`` govern the outlier down-weighting (module docstring, "Outliers"); ``clip`` = 2 is
    the conventional Huber-type choice (2.5 and 3 moved the few-shot means at N >= 10 by <= 0.003; at N=5 they
    rescue less of a corrupted set: fbnet 0.848 with 2 vs 0.814 with 3)."""

    gamma: float = 1.0
    sigma_a: float = 0.3
    sigma_r: float | None = None  # scale of BOUND_TABLES; None: sigma_a (states written before it existed)
    sigma_wide: float = 0.0  # > 0: each device may choose every analytic table at this scale instead (see below)
    sigma_tile: float = 0.0  # > 0 (with sigma_wide): a third choice adds the tiled-MAC tables at this scale
    with_tiled: bool = False  # whether this prior includes the tiled-MAC tables (set by candidates())
    unlike_log_odds: float = 0.0  # prior log-odds of each further candidate against these (module docstring)
    unlike_min_weight: float = 0.5  # ... applied only while no sample weighs less under these (no outlier)
    unlike_min_samples: int = 8  # ... and from this many samples on
    sigma_b: float = 0.3
    tau: float = 0.1
    sigma_n: float = 0.03
    sigma_g: float = 0.0
    clip: float = 2.0
    robust_min_samples: int = 4

    def to_dict(self) -> dict[str, float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def candidates(self) -> list["HyperParams"]:
        """The hyper-parameters a device's posterior chooses among by marginal likelihood: these; with
        ``sigma_wide`` > 0 the same with every analytic table at ``sigma_wide`` (module docstring, "Wide"); and
        with ``sigma_tile`` > 0 too, that wide prior plus the tiled-MAC tables (module docstring, "Tiles")."""
        if self.sigma_wide <= 0:
            return [self]
        wide = replace(self, sigma_a=self.sigma_wide, sigma_r=self.sigma_wide)
        return [self, wide, replace(wide, with_tiled=True)] if self.sigma_tile > 0 else [self, wide]

    def analytic_scales(self) -> np.ndarray:
        """Prior scale of each analytic table, in :data:`ANALYTIC_NAMES` order: ``sigma_r`` for
        :data:`BOUND_TABLES`, ``sigma_a`` for the rest."""
        sr = self.sigma_a if self.sigma_r is None else self.sigma_r
        return np.array([sr if n in BOUND_TABLES else self.sigma_a for n in ANALYTIC_NAMES])

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HyperParams":
        """From :meth:`to_dict`'s output; keys it lacks (states written before a field existed) keep their
        defaults, keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def loo_residuals(kinv: np.ndarray, resid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out residuals ``e_i = (K⁻¹r)_i / (K⁻¹)_ii`` of a Gaussian model with covariance ``K`` (given as
    its inverse ``kinv``) and residuals ``r`` against its mean, and ``(K⁻¹)_ii`` (the inverse leave-one-out
    predictive variances)."""
    kd = np.diag(kinv)
    return (kinv @ resid) / kd, kd


def outlier_variance(prior_cov: np.ndarray, noise: np.ndarray, resid: np.ndarray, clip: float,
                     iters: int = 5) -> np.ndarray:
    """Per-sample multipliers (>= 1) of the noise variances ``noise`` that bring every sample's standardised
    leave-one-out residual within ``clip`` (see the module docstring, "Outliers").

    For a Gaussian model with covariance ``K = prior_cov + diag(noise·v)`` the leave-one-out residual of
    sample ``i`` is ``e_i = (K⁻¹r)_i / (K⁻¹)_ii`` and its predictive variance ``1/(K⁻¹)_ii = f_i + noise_i·v_i``
    (``f_i``: the other samples' uncertainty about it). ``e_i`` does not depend on ``v_i``, so
    ``v_i = max(1, (e_i²/clip² - f_i) / noise_i)`` makes ``|e_i|`` exactly ``clip`` predictive standard
    deviations; repeated because down-weighting one sample changes the others' leave-one-out predictions.
    """
    v = np.ones(len(resid))
    eye = 1e-12 * np.eye(len(resid))
    for _ in range(iters):
        e, kd = loo_residuals(np.linalg.inv(prior_cov + np.diag(noise * v) + eye), resid)
        f = np.maximum(1.0 / kd - noise * v, 0.0)
        v_new = np.maximum(1.0, (e ** 2 / clip ** 2 - f) / noise)
        if np.allclose(v_new, v, rtol=1e-3):
            return v_new
        v = v_new
    return v


def _normalised(y: Sequence[float] | np.ndarray) -> tuple[np.ndarray, float]:
    """Latencies divided by their geometric mean (the device scale), and that scale: the prior is over
    normalised tables."""
    y = np.asarray(y, dtype=np.float64)
    s = float(np.exp(np.mean(np.log(y))))
    return y / s, s


#: names of :meth:`HyperParams.candidates`, by index (``Posterior.candidate``).
CANDIDATE_NAMES = ("tuned", "wide", "wide+tiled")


class Posterior(NamedTuple):
    """Few-shot posterior of :meth:`MetaPrior.posterior`."""

    table: np.ndarray  #: posterior-mean cost table in milliseconds [F]
    weights: np.ndarray  #: per-sample weights in (0, 1]: 1 = taken at face value, less = down-weighted outlier
    loo_log_resid: np.ndarray  #: log(y_i) - log(prediction of y_i from the other samples), per sample
    candidate: int = 0  #: the candidate the evidence chose (:data:`CANDIDATE_NAMES`: as given, wide, wide + tiled)


def fit_device_table(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """Cost table of one device from many measured archs: ridge regression weighted by ``1/y²`` (relative
    error, so that fast archs count as much as slow ones), ``ridge`` relative to the mean feature energy."""
    w = 1.0 / np.asarray(y, dtype=np.float64)
    xw = x * w[:, None]
    g = xw.T @ xw
    lam = ridge * np.trace(g) / g.shape[0]
    return np.linalg.solve(g + lam * np.eye(g.shape[0]), xw.T @ (y * w))


@dataclass
class MetaPrior:
    """The meta-trained state of one space: Gaussian prior over normalised device tables.

    Attributes:
        space: space name.
        pool_mean: mean feature vector of the reference pool (normalises tables: ``pool_mean·c = 1``).
        mean: prior mean table ``μ`` [F].
        source_factors: ``[F, K]`` centred normalised source tables divided by ``sqrt(K-1)`` (``Cov = S Sᵀ``).
        analytic: ``[F, len(ANALYTIC_NAMES)]`` normalised analytic tables.
        scale_diag: ``d`` [F], typical per-feature magnitude.
        devices: names of the source devices.
        hyper: hyper-parameters.
    """

    space: str
    pool_mean: np.ndarray
    mean: np.ndarray
    source_factors: np.ndarray
    analytic: np.ndarray
    scale_diag: np.ndarray
    devices: tuple[str, ...]
    groups: np.ndarray  # [F, G] group directions, already scaled by the typical per-feature magnitude
    hyper: HyperParams = field(default_factory=HyperParams)
    tiled: np.ndarray | None = None  # [F, len(TILED_NAMES)] normalised tiled-MAC tables; None: not available

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    def factors(self, hyper: HyperParams | None = None) -> np.ndarray:
        """Low-rank factor ``U`` with ``Σ = U Uᵀ + τ² diag(d²)``."""
        h = hyper or self.hyper
        const = np.zeros((self.n_features, 1))
        const[-1, 0] = 1.0
        parts = [h.gamma * self.source_factors, self.analytic * h.analytic_scales(), h.sigma_b * const,
                 h.sigma_g * self.groups]
        if h.with_tiled and self.tiled is not None:
            parts.append(h.sigma_tile * self.tiled)
        return np.concatenate(parts, 1)

    def _terms(self, x: np.ndarray, t: np.ndarray, h: HyperParams):
        """Prior factor, its sample projection, residual diagonal, prior covariance of the samples, their
        (outlier-adjusted) noise variances and residuals against the prior mean."""
        u = self.factors(h)
        xu = x @ u  # [N, R]
        dd = (h.tau * self.scale_diag) ** 2
        prior_cov = xu @ xu.T + (x * dd) @ x.T
        noise = (h.sigma_n ** 2) * t ** 2
        resid = t - x @ self.mean
        if h.clip > 0 and len(t) >= h.robust_min_samples:
            noise = noise * outlier_variance(prior_cov, noise, resid, h.clip)
        return u, xu, dd, prior_cov, noise, resid

    def _solve(self, x: np.ndarray, t: np.ndarray, h: HyperParams) -> tuple[float, Posterior]:
        """Log marginal likelihood of normalised targets ``t`` and the posterior in normalised units: table,
        per-sample weights (``1 /`` :func:`outlier_variance`) and leave-one-out log residuals (closed form:
        the other samples' prediction of ``t_i`` is ``t_i - (K⁻¹r)_i / (K⁻¹)_ii``)."""
        u, xu, dd, prior_cov, noise, resid = self._terms(x, t, h)
        k = prior_cov + np.diag(noise) + 1e-12 * np.eye(len(t))
        chol = np.linalg.cholesky(k)
        z = np.linalg.solve(chol, resid)
        alpha = np.linalg.solve(chol.T, z)
        table = self.mean + u @ (xu.T @ alpha) + dd * (x.T @ alpha)
        loglik = -0.5 * float(z @ z) - float(np.sum(np.log(np.diag(chol))))
        linv = np.linalg.inv(chol)
        t_loo = t - loo_residuals(linv.T @ linv, resid)[0]
        loo = np.log(t) - np.log(np.maximum(t_loo, 1e-3 * t))
        return loglik, Posterior(table, (h.sigma_n ** 2) * t ** 2 / noise, loo)

    def posterior(self, x: np.ndarray, y: np.ndarray, hyper: HyperParams | None = None,
                  grid: Sequence[HyperParams] | None = None) -> Posterior:
        """Posterior from ``N`` measured samples (features ``x [N,F]``, ``y`` ms): the posterior-mean table in
        milliseconds, the weights in ``(0, 1]`` it gave the samples (1 = taken at face value, less =
        down-weighted as an outlier; the measured basis weights the samples alike) and its leave-one-out log
        residuals (how well the additive model alone predicts each sample; the measured basis competes
        against it).

        The device scale is the geometric mean of ``y``; targets are divided by it so that the prior applies.
        The hyper-parameters of this device are chosen by marginal likelihood among ``grid``, by default
        among ``hyper.candidates()`` (empirical Bayes: a device unlike the sources asks for a wider prior on its
        own), the candidates after the first with prior log-odds ``unlike_log_odds`` where its gates allow
        (module docstring, "Odds").
        """
        t, s = _normalised(y)
        base = hyper or self.hyper
        grid = grid or base.candidates()
        fits = [self._solve(x, t, h) for h in grid]
        score = [f[0] for f in fits]
        if base.unlike_log_odds and len(t) >= base.unlike_min_samples \
                and fits[0][1].weights.min() >= base.unlike_min_weight:
            score = [v + (base.unlike_log_odds if i else 0.0) for i, v in enumerate(score)]
        best = max(range(len(fits)), key=lambda i: score[i])
        return fits[best][1]._replace(table=fits[best][1].table * s, candidate=best)

    def posterior_table(self, x: np.ndarray, y: np.ndarray, hyper: HyperParams | None = None,
                        grid: Sequence[HyperParams] | None = None) -> np.ndarray:
        """The table of :meth:`posterior` alone."""
        return self.posterior(x, y, hyper, grid)[0]


def suspects(weights: np.ndarray, factor: float = 4.0) -> list[int]:
    """Indices of the samples :meth:`MetaPrior.posterior` down-weighted as outliers (noise variance raised more
    than ``factor``-fold: leave-one-out residual beyond twice the clip), so a user can re-measure them."""
    return [int(i) for i in np.flatnonzero(np.asarray(weights) < 1.0 / factor)]


def build_prior(space: str, x: np.ndarray, latency: np.ndarray, devices: Sequence[str], analytic: np.ndarray,
                groups: np.ndarray, hyper: HyperParams | None = None, tiled: np.ndarray | None = None) -> MetaPrior:
    """Meta-train: fit each source device's table on its measured archs and form the Gaussian prior.

    Args:
        x: ``[n_archs, F]`` features of the measured archs (also the reference pool).
        latency: ``[n_archs, K]`` ms, one column per device in ``devices``.
        analytic: ``[len(ANALYTIC_NAMES), F]`` analytic cost tables.
        groups: ``[F, G]`` 0/1 group indicators (see :func:`fitplan.predictors.features.space_features`).
        tiled: ``[len(TILED_NAMES), F]`` tiled-MAC tables (module docstring, "Tiles"); ``None``: none.
    """
    pool_mean = x.mean(axis=0)
    tables = []
    for j in range(latency.shape[1]):
        c = fit_device_table(x, latency[:, j])
        tables.append(c / float(pool_mean @ c))
    tabs = np.stack(tables, axis=1)  # [F, K]
    mean = tabs.mean(axis=1)
    k = tabs.shape[1]
    src = (tabs - mean[:, None]) / np.sqrt(max(k - 1, 1))
    an_m = _pool_normalised(analytic, pool_mean)
    scale = np.abs(tabs).mean(axis=1) + 0.1 * np.abs(an_m).mean(axis=1) + 1e-6
    return MetaPrior(space=space, pool_mean=pool_mean, mean=mean, source_factors=src, analytic=an_m,
                     scale_diag=scale, devices=tuple(devices), groups=groups * scale[:, None],
                     hyper=hyper or HyperParams(), tiled=None if tiled is None else _pool_normalised(tiled, pool_mean))


def _pool_normalised(rows: np.ndarray, pool_mean: np.ndarray) -> np.ndarray:
    """Cost tables ``[T, F]`` as columns ``[F, T]``, each scaled to mean cost 1 over the reference pool (as device
    tables are), so one prior scale means the same for every table."""
    tot = [float(pool_mean @ row) for row in rows]
    out = [row / t if t > 0 else row for row, t in zip(rows, tot)]
    return np.stack(out, axis=1) if out else np.zeros((len(pool_mean), 0))


__all__ = ["ANALYTIC_NAMES", "BOUND_TABLES", "CANDIDATE_NAMES", "HyperParams", "MetaPrior", "Posterior", "build_prior",
           "fit_device_table", "loo_residuals", "outlier_variance", "suspects"]
