import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Test tensors are small: intra-op threads only add OpenMP overhead (10x on a loaded 2-core machine).
torch.set_num_threads(1)

# Shared test helpers (tests/_spaces.py: the tiny elastic conv spaces) import as top-level modules from every
# test directory, whatever the import mode.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session", autouse=True)
def fitplan_cache_dir(tmp_path_factory):
    """One timing reference + anchor cache for the whole session (measured once, never the user's cache)."""
    old = os.environ.get("FITPLAN_CACHE_DIR")
    os.environ["FITPLAN_CACHE_DIR"] = str(tmp_path_factory.mktemp("fitplan-cache"))
    yield os.environ["FITPLAN_CACHE_DIR"]
    if old is None:
        os.environ.pop("FITPLAN_CACHE_DIR", None)
    else:
        os.environ["FITPLAN_CACHE_DIR"] = old


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(0)
