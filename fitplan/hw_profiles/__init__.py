"""Hardware profiles: what a device is, how fitplan measures it, and how a device it cannot reach gets
measured anyway.

* :class:`HardwareProfile` (versioned JSON) with runtime, capabilities, memory, provenance of every datum,
  measured-dataset references and calibrated predictor state; :func:`get_profile` / :func:`list_profiles`
  / :func:`save_profile` over built-in profiles (HELP / HW-NAS-Bench devices, ``local-cpu-1t``,
  ``local-cpu``) and user profiles in ``fitplan_home()/profiles``.
* :func:`measure_config` / :func:`measure_module` / :func:`measure_configs`: real ONNX Runtime latency
  (fp32, int8 static QDQ) with stable medians, into resumable JSONL datasets.
* :func:`write_kit` / :func:`import_results`: the calibration kit for remote devices.
* :func:`profile_samples`: the measured latencies a profile references, for the predictors.
"""
from fitplan.hw_profiles.profile import (CAPABILITIES, KINDS, TRISTATE, Capabilities, DatasetRef,
                                         HardwareProfile, Provenance, Runtime)
from fitplan.hw_profiles.store import (BUILTIN_PROFILES, all_profiles, get_profile, list_profiles, profiles_dir,
                                       save_profile)
from fitplan.hw_profiles.datasets import LatencySamples, load_dataset, profile_samples
from fitplan.hw_profiles.measure import (Measurement, machine_fingerprint, measure_config, measure_configs,
                                         measure_module, measure_onnx, read_measurements,
                                         sample_measure_configs)
from fitplan.hw_profiles.kit import import_results, read_samples, write_kit

__all__ = [
    "BUILTIN_PROFILES", "CAPABILITIES", "KINDS", "TRISTATE", "Capabilities", "DatasetRef", "HardwareProfile",
    "LatencySamples", "Measurement", "Provenance", "Runtime", "all_profiles", "get_profile", "import_results",
    "list_profiles", "load_dataset", "machine_fingerprint", "measure_config", "measure_configs",
    "measure_module", "measure_onnx", "profile_samples", "profiles_dir", "read_measurements", "read_samples",
    "sample_measure_configs", "save_profile", "write_kit",
]
