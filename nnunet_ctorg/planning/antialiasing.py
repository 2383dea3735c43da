"""A coarse isotropic configuration (default 3 mm) with anti-aliased image resampling (paper 003 §V-A).

nnU-Net interpolates without a low-pass filter; bringing a 0.7 mm CT to 3 mm then aliases. Here images
are smoothed with a Gaussian of per-axis sigma (in input voxels)

    σ_k = (1/3) · max(r / u_k − 1, 0)        (r target spacing, u_k input spacing)

before nnU-Net's own interpolation; labels (nearest / one-hot) and predictions back to the original
grid are resampled exactly as nnU-Net does.

nnU-Net 2.8 looks up planners, preprocessors and resampling functions by name inside its own package
only (``nnUNet_extTrainer`` exists for trainers alone), so without copying files into nnU-Net or
patching it the anti-aliasing cannot be named in the plans. Instead the configuration carries the key
``"antialiasing": {"sigma_factor": 1/3}`` next to nnU-Net's ``resampling_fn_data``; our preprocessing
command and the chunked predictor apply it (``AntiAliasedPreprocessor``); nnU-Net's own
``nnUNetv2_preprocess``/``nnUNetv2_predict`` ignore the key and interpolate without the filter.
"""

from collections.abc import Sequence
from functools import partial

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from scipy import ndimage

ANTIALIASING_KEY = "antialiasing"
DEFAULT_SIGMA_FACTOR = 1.0 / 3.0


def antialiasing_sigma(current_spacing: Sequence[float], new_spacing: Sequence[float],
                       sigma_factor: float = DEFAULT_SIGMA_FACTOR) -> np.ndarray:
    """Per-axis Gaussian sigma in input voxels: factor · max(new / current − 1, 0); 0 when upsampling."""
    current, new = np.asarray(current_spacing, dtype=float), np.asarray(new_spacing, dtype=float)
    if current.shape != new.shape or np.any(current <= 0) or np.any(new <= 0):
        raise ValueError(f"spacings must be positive and of one length, got {current_spacing!r} and {new_spacing!r}")
    if sigma_factor < 0:
        raise ValueError(f"sigma_factor must be >= 0, got {sigma_factor!r}")
    return sigma_factor * np.maximum(new / current - 1.0, 0.0)


def smooth_for_downsampling(data: np.ndarray, current_spacing: Sequence[float], new_spacing: Sequence[float],
                            sigma_factor: float = DEFAULT_SIGMA_FACTOR) -> np.ndarray:
    """Low-pass each channel of (C, X, Y, Z) ``data`` before it is brought to ``new_spacing``."""
    sigma = antialiasing_sigma(current_spacing, new_spacing, sigma_factor)
    if not np.any(sigma > 0):
        return data
    smoothed = np.empty(data.shape, dtype=np.float32)
    for c in range(data.shape[0]):
        ndimage.gaussian_filter(data[c].astype(np.float32, copy=False), sigma, output=smoothed[c], mode="nearest",
                                truncate=4.0)
    return smoothed


def resample_data_antialiased(data: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float],
                              new_spacing: Sequence[float], interpolate=None,
                              sigma_factor: float = DEFAULT_SIGMA_FACTOR) -> np.ndarray:
    """Smooth (``smooth_for_downsampling``), then ``interpolate`` (nnU-Net's function from the plans)."""
    if interpolate is None:
        from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape as interpolate
    smoothed = smooth_for_downsampling(np.asarray(data), current_spacing, new_spacing, sigma_factor)
    return interpolate(smoothed, new_shape, current_spacing, new_spacing)


class AntiAliasedConfigurationManager(ConfigurationManager):
    """A configuration whose image resampling smooths first (labels and exports as nnU-Net)."""

    @property
    def resampling_fn_data(self):
        settings = self.configuration.get(ANTIALIASING_KEY) or {}
        return partial(resample_data_antialiased, interpolate=super().resampling_fn_data,
                       sigma_factor=float(settings.get("sigma_factor", DEFAULT_SIGMA_FACTOR)))


def with_antialiasing(configuration_manager: ConfigurationManager) -> ConfigurationManager:
    """The configuration with anti-aliased image resampling if its plans ask for it, else unchanged."""
    if configuration_manager.configuration.get(ANTIALIASING_KEY) and \
            not isinstance(configuration_manager, AntiAliasedConfigurationManager):
        return AntiAliasedConfigurationManager(configuration_manager.configuration)
    return configuration_manager


class AntiAliasedPreprocessor(DefaultPreprocessor):
    """nnU-Net's ``DefaultPreprocessor`` that honours a configuration's ``antialiasing`` key."""

    def run_case_npy(self, data, seg, properties, plans_manager, configuration_manager, dataset_json):
        return super().run_case_npy(data, seg, properties, plans_manager, with_antialiasing(configuration_manager),
                                    dataset_json)


class IsotropicAntiAliasedPlanner(ExperimentPlanner):
    """nnU-Net's planner plus a configuration ``3d_<r>mm`` at isotropic spacing r (default 3 mm).

    Patch, network and batch size of the new configuration come from nnU-Net's own
    ``get_plans_for_configuration`` at that spacing; images are resampled with anti-aliasing.
    """

    def __init__(self, dataset_name_or_id: str | int, gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str = "nnUNetPlans",
                 overwrite_target_spacing: Sequence[float] | None = None, suppress_transpose: bool = False,
                 isotropic_spacing: float = 3.0, sigma_factor: float = DEFAULT_SIGMA_FACTOR):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        if not isotropic_spacing > 0:
            raise ValueError(f"isotropic_spacing must be > 0, got {isotropic_spacing!r}")
        if sigma_factor < 0:
            raise ValueError(f"sigma_factor must be >= 0, got {sigma_factor!r}")
        self.isotropic_spacing, self.sigma_factor = float(isotropic_spacing), float(sigma_factor)

    @property
    def configuration_name(self) -> str:
        return f"3d_{self.isotropic_spacing:g}mm"

    def plan_experiment(self) -> dict:
        plans = super().plan_experiment()
        spacing = np.full(3, self.isotropic_spacing)
        transpose_forward, _ = self.determine_transpose()
        shapes = [compute_new_shape(shape, s, spacing) for s, shape in
                  zip(self.dataset_fingerprint["spacings"], self.dataset_fingerprint["shapes_after_crop"])]
        median_shape = np.median(shapes, 0)[transpose_forward]
        n_voxels = float(np.prod(median_shape, dtype=np.float64) * self.dataset_json["numTraining"])
        configuration = self.get_plans_for_configuration(
            spacing[transpose_forward], median_shape, self.generate_data_identifier(self.configuration_name),
            n_voxels, {})
        configuration["batch_dice"] = True
        configuration[ANTIALIASING_KEY] = {"sigma_factor": self.sigma_factor}
        plans["configurations"][self.configuration_name] = configuration
        self.save_plans(plans)
        return plans
