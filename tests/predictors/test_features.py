"""Per-feature cost tables of :mod:`fitplan.predictors.features`."""
from __future__ import annotations

import numpy as np
import pytest

from fitplan.predictors.features import (ANALYTIC_NAMES, TILE_SIZES, TILED_NAMES, Conv, fbnet_convs, space_features,
                                         tiled_macs)


def test_tiled_macs_round_channel_counts_up_to_the_tile():
    full = Conv(macs=1000.0, moved=0.0, c_in=24, c_out=64, depthwise=False)
    dw = Conv(macs=100.0, moved=0.0, c_in=1, c_out=40, depthwise=True)
    t = dict(zip(TILED_NAMES, tiled_macs([full, dw])))
    assert t["pw_macs_t16"] == pytest.approx(1000 * 32 / 24)  # 24 input channels fill 2 of 16: 32
    assert t["pw_macs_t32"] == pytest.approx(1000 * 32 / 24)
    assert t["pw_macs_t64"] == pytest.approx(1000 * 64 / 24)  # 64 output channels fill every tile
    assert t["dw_macs_t16"] == pytest.approx(100 * 48 / 40)  # depthwise: only the channel count is tiled
    assert t["dw_macs_t64"] == pytest.approx(100 * 64 / 40)


@pytest.mark.parametrize("space", ["fbnet", "ofa_mbv3"])
def test_tiled_tables_cover_the_convolutions_and_grow_with_the_tile(space):
    sf = space_features(space)
    assert sf.tiled.shape == (len(TILED_NAMES), sf.n_features)
    k = len(TILE_SIZES)
    pw_tiled, dw_tiled = sf.tiled[:k], sf.tiled[k:]
    dw = sf.analytic[ANALYTIC_NAMES.index("dw_macs")]
    np.testing.assert_array_equal(dw_tiled[0] > 0, dw > 0)  # every depthwise conv, and only those
    assert np.all(dw_tiled >= dw - 1e-6)
    assert np.all(np.diff(pw_tiled, axis=0) >= -1e-6) and np.all(np.diff(dw_tiled, axis=0) >= -1e-6)
    if space == "fbnet":  # its MACs table counts exactly these convolutions
        macs = sf.analytic[ANALYTIC_NAMES.index("macs")]
        assert np.all(pw_tiled[0] + dw_tiled[0] >= macs - 1e-6)


def test_fbnet_convs_match_the_macs_table():
    macs = space_features("fbnet").analytic[ANALYTIC_NAMES.index("macs")]
    for f, convs in fbnet_convs().items():
        assert sum(c.macs for c in convs) == pytest.approx(macs[f])
