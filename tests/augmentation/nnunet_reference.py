"""nnU-Net's own training augmentation for a plan, read back into our parameter names.

``nnunet_plan`` runs ``nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size`` on a
patch size (rotation range, dummy 2-D, initial patch, mirror axes), ``nnunet_transforms`` builds
``nnUNetTrainer.get_training_transforms`` for that plan and ``nnunet_values`` walks the resulting
ComposeTransforms / RandomTransform objects: every probability and range comes from nnU-Net's objects.
"""

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

ISOTROPIC_PATCH = (96, 160, 160)  # a 3-D full-resolution plan: full 3-D rotations
ANISOTROPIC_PATCH = (16, 192, 160)  # max / first > ANISO_THRESHOLD: "dummy 2-D" rotations in-plane
DEEP_SUPERVISION = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]


@dataclass(frozen=True)
class NNUNetPlan:
    patch_size: tuple[int, ...]
    rotation_for_da: tuple[float, float]
    dummy_2d: bool
    initial_patch_size: tuple[int, ...]
    mirror_axes: tuple[int, ...]


def nnunet_plan(patch_size: tuple[int, ...]) -> NNUNetPlan:
    """What nnU-Net's trainer derives from a configuration's patch size (its own method, on a stand-in)."""
    stand_in = SimpleNamespace(configuration_manager=SimpleNamespace(patch_size=list(patch_size)),
                               print_to_log_file=lambda *args, **kwargs: None)
    rotation, dummy_2d, initial, mirror = nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(
        stand_in)
    return NNUNetPlan(tuple(patch_size), tuple(float(r) for r in rotation), bool(dummy_2d),
                      tuple(int(s) for s in initial), tuple(mirror))


def nnunet_transforms(plan: NNUNetPlan, deep_supervision_scales=DEEP_SUPERVISION) -> list[BasicTransform]:
    """nnU-Net's training transforms for the plan, flattened (ComposeTransforms' list)."""
    return list(nnUNetTrainer.get_training_transforms(plan.patch_size, plan.rotation_for_da, deep_supervision_scales,
                                                      plan.mirror_axes, plan.dummy_2d).transforms)


def _unwrap(transform: BasicTransform) -> tuple[float, BasicTransform]:
    if isinstance(transform, RandomTransform):
        return float(transform.apply_probability), transform.transform
    return 1.0, transform


def _range(value) -> tuple[float, float]:
    value = value.contrast_range if isinstance(value, BGContrast) else value
    return tuple(float(v) for v in value)


def mirror_probability(transform: MirrorTransform, draws: int = 4000, seed: int = 0) -> float:
    """The per-axis mirroring probability of nnU-Net's MirrorTransform, measured from its own draws."""
    torch.manual_seed(seed)
    counts = [len(transform.get_parameters(image=torch.zeros(1, 2, 2, 2))["axes"]) for _ in range(draws)]
    return float(np.mean(counts)) / len(transform.allowed_axes)


def nnunet_values(plan: NNUNetPlan) -> dict[str, object]:
    """Every probability and range of nnU-Net's pipeline, under our names (``AugmentationParameters``'
    fields, and ``<transform>.<argument>`` for constructor arguments that are not parameters)."""
    values: dict[str, object] = {"order": []}
    for wrapped in nnunet_transforms(plan):
        p, t = _unwrap(wrapped)
        values["order"].append(type(t).__name__)
        if isinstance(t, SpatialTransform):
            values.update(p_rotation=t.p_rotation, rotation=max(abs(r) for r in _range(t.rotation)),
                          in_plane_only=len(t.patch_size) == 2, p_scaling=t.p_scaling, scaling=_range(t.scaling),
                          p_elastic_deform=t.p_elastic_deform, p_rot_per_axis=t.p_rot_per_axis,
                          isotropic_scaling=t.p_synchronize_scaling_across_axes == 1,
                          label_interpolation={"bilinear": "linear", "nearest": "nearest"}[t.mode_seg],
                          padding_value_seg=t.padding_value_seg, padding_mode_image=t.padding_mode_image,
                          seg_tiebreak=t.seg_tiebreak, physical_rotation=False)
        elif isinstance(t, GaussianNoiseTransform):
            values.update(p_noise=p, noise_sigma_max=_range(t.noise_variance)[1],
                          noise_sigma_min=_range(t.noise_variance)[0], noise_one_sigma=t.synchronize_channels)
        elif isinstance(t, GaussianBlurTransform):
            values.update(p_blur=p, blur_sigma=_range(t.blur_sigma), **{
                "blur.p_per_channel": t.p_per_channel, "blur.sigma_per_axis": not t.synchronize_axes,
                "blur.sigma_per_channel": not t.synchronize_channels})
        elif isinstance(t, MultiplicativeBrightnessTransform):
            values.update(p_brightness=p, brightness=_range(t.multiplier_range), **{
                "brightness.bg_contrast": isinstance(t.multiplier_range, BGContrast),
                "brightness.p_per_channel": t.p_per_channel})
        elif isinstance(t, ContrastTransform):
            values.update(p_contrast=p, contrast=_range(t.contrast_range), **{
                "contrast.bg_contrast": isinstance(t.contrast_range, BGContrast),
                "contrast.preserve_range": t.preserve_range, "contrast.p_per_channel": t.p_per_channel})
        elif isinstance(t, SimulateLowResolutionTransform):
            values.update(p_low_resolution=p, low_resolution_scale=_range(t.scale), **{
                "low_resolution.p_per_channel": t.p_per_channel,
                "low_resolution.ignore_axes": tuple(t.ignore_axes or ()),
                "low_resolution.one_scale_for_all_axes": t.synchronize_axes})
        elif isinstance(t, GammaTransform):
            name = "p_gamma_inverted" if t.p_invert_image == 1 else "p_gamma"
            assert t.p_invert_image in (0, 1) and t.p_retain_stats == 1 and t.p_per_channel == 1
            values[name] = p
            values[f"{name}.gamma"] = _range(t.gamma)
            values[f"{name}.bg_contrast"] = isinstance(t.gamma, BGContrast)
        elif isinstance(t, MirrorTransform):
            values.update(mirror_axes=tuple(t.allowed_axes), p_mirror=mirror_probability(t))
        elif isinstance(t, DownsampleSegForDSTransform):
            values["deep_supervision_scales"] = [[float(s) for s in scale] for scale in t.ds_scales]
    assert values["p_gamma_inverted.gamma"] == values["p_gamma.gamma"]
    values["gamma"] = values["p_gamma.gamma"]
    return values
