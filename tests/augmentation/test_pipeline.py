"""The pipeline built for an nnU-Net plan: the same probabilities, ranges and order as nnU-Net's own transforms for
that plan (3-D and anisotropic "dummy 2-D"), the draws that follow them, the crop, the CT statistics."""

import math

import numpy as np
import pytest
import torch

from nnunet_ctorg.augmentation import (
    AugmentationParameters,
    DeviceAugmentation,
    augmentation_crop_size,
    build_device_augmentation,
    ct_channel_statistics,
)
from nnunet_ctorg.augmentation.pipeline import move_parameters
from nnunet_ctorg.augmentation.transforms import (
    BatchedAffineWarp,
    BatchedBrightness,
    BatchedContrast,
    BatchedGamma,
    BatchedGaussianBlur,
    BatchedGaussianNoise,
    BatchedHUWindow,
    BatchedLowResolution,
    BatchedSlabOcclusion,
    BatchedTrainingTargets,
)
from tests.augmentation.nnunet_reference import (
    ANISOTROPIC_PATCH,
    DEEP_SUPERVISION,
    ISOTROPIC_PATCH,
    NNUNetPlan,
    nnunet_plan,
    nnunet_values,
)

CT_STATS = [(40.0, 300.0, -1000.0)]  # mean, std, lower clip of a CT plan (HU)
# our operations -> nnU-Net's; None: not in nnU-Net (the paper's)
NNUNET_NAMES = {BatchedAffineWarp: "SpatialTransform", BatchedSlabOcclusion: None,
                BatchedGaussianNoise: "GaussianNoiseTransform", BatchedHUWindow: None,
                BatchedGaussianBlur: "GaussianBlurTransform", BatchedBrightness: "MultiplicativeBrightnessTransform",
                BatchedContrast: "ContrastTransform", BatchedLowResolution: "SimulateLowResolutionTransform",
                BatchedGamma: "GammaTransform", BatchedTrainingTargets: "DownsampleSegForDSTransform"}
# nnU-Net's transforms that ours fold elsewhere, with the reason
FOLDED = {"MirrorTransform": "folded into the warp (every later operation is symmetric under flips)",
          "RemoveLabelTransform": "the warp clamps -1 (outside the volume) to background",
          "Convert3DTo2DTransform": "dummy 2-D: the warp rotates about axis 0 itself (in_plane_only)",
          "Convert2DTo3DTransform": "dummy 2-D: the warp rotates about axis 0 itself (in_plane_only)"}


def _as_trainer_builds(plan: NNUNetPlan, parameters: AugmentationParameters = AugmentationParameters(),
                       seed: int = 0) -> DeviceAugmentation:
    """``CTOrgIOUTrainer.get_training_transforms``' call for nnU-Net's plan values."""
    return build_device_augmentation(parameters, plan.patch_size, CT_STATS,
                                     rotation=max(abs(r) for r in plan.rotation_for_da),
                                     in_plane_only=plan.dummy_2d, mirror_axes=plan.mirror_axes,
                                     deep_supervision_scales=DEEP_SUPERVISION, seed=seed)


@pytest.mark.parametrize("patch", [ISOTROPIC_PATCH, ANISOTROPIC_PATCH], ids=["3d", "anisotropic"])
def test_the_built_pipeline_has_nnunets_probabilities_and_ranges_for_the_plan(patch):
    plan = nnunet_plan(patch)
    assert plan.dummy_2d == (patch == ANISOTROPIC_PATCH)  # both branches of nnU-Net's trainer are covered
    ref = nnunet_values(plan)
    t = _as_trainer_builds(plan).transforms
    warp, noise, blur, brightness, contrast, low_res, inverted, gamma, targets = (
        t[0], t[2], t[4], t[5], t[6], t[7], t[8], t[9], t[10])
    assert (warp.p_rotation, warp.p_scaling, warp.scaling) == (ref["p_rotation"], ref["p_scaling"], ref["scaling"])
    assert warp.rotation == pytest.approx(ref["rotation"], rel=1e-12)
    assert warp.in_plane_only == ref["in_plane_only"] and warp.label_interpolation == ref["label_interpolation"]
    assert warp.spacing is None and not ref["physical_rotation"]  # rotations of voxel indices, as nnU-Net's
    assert warp.mirror_axes == ref["mirror_axes"] and warp.p_mirror == pytest.approx(ref["p_mirror"], abs=0.02)
    assert ref["p_elastic_deform"] == 0 and ref["p_rot_per_axis"] == 1 and ref["isotropic_scaling"]
    assert (noise.p_noise, noise.sigma_max) == (ref["p_noise"], ref["noise_sigma_max"])
    assert (blur.p_blur, blur.blur_sigma, blur.p_per_channel) == (ref["p_blur"], ref["blur_sigma"],
                                                                   ref["blur.p_per_channel"])
    assert (brightness.p_brightness, brightness.brightness) == (ref["p_brightness"], ref["brightness"])
    assert (contrast.p_contrast, contrast.contrast) == (ref["p_contrast"], ref["contrast"])
    assert (low_res.p_low_resolution, low_res.scale, low_res.p_per_channel, low_res.ignore_axes) == (
        ref["p_low_resolution"], ref["low_resolution_scale"], ref["low_resolution.p_per_channel"],
        ref["low_resolution.ignore_axes"])
    assert (inverted.invert, inverted.p_gamma, inverted.gamma) == (True, ref["p_gamma_inverted"], ref["gamma"])
    assert (gamma.invert, gamma.p_gamma, gamma.gamma) == (False, ref["p_gamma"], ref["gamma"])
    assert targets.deep_supervision_scales == ref["deep_supervision_scales"] and targets.regions is None


@pytest.mark.parametrize("patch", [ISOTROPIC_PATCH, ANISOTROPIC_PATCH], ids=["3d", "anisotropic"])
def test_operations_run_in_nnunets_order_with_the_named_departures(patch):
    """Ours in nnU-Net's order, plus the paper's occlusion (after the warp) and HU window (after the noise)."""
    ref = nnunet_values(nnunet_plan(patch))
    ours = [type(t) for t in _as_trainer_builds(nnunet_plan(patch)).transforms]
    assert [NNUNET_NAMES[t] for t in ours if NNUNET_NAMES[t]] == [n for n in ref["order"] if n not in FOLDED]
    assert ours[1] is BatchedSlabOcclusion and ours[3] is BatchedHUWindow
    assert all(n in FOLDED or n in NNUNET_NAMES.values() for n in ref["order"])


@pytest.mark.parametrize("patch", [ISOTROPIC_PATCH, ANISOTROPIC_PATCH], ids=["3d", "anisotropic"])
def test_the_draws_follow_the_plans_probabilities(patch):
    """4000 examples of one batch: how often each operation is drawn, the warp's ranges, mirroring per axis."""
    plan = nnunet_plan(patch)
    ref = nnunet_values(plan)
    pipeline = _as_trainer_builds(plan, seed=5)
    n = 4000
    crop = augmentation_crop_size(AugmentationParameters(), patch, pipeline.warp.rotation, plan.dummy_2d)
    params = pipeline.draw_parameters((n, 1, *crop))
    rates = {"p_occlusion": params[1]["chosen"], "p_noise": params[2]["chosen"], "p_window": params[3]["chosen"],
             "p_blur": params[4]["chosen"], "p_brightness": params[5]["chosen"], "p_contrast": params[6]["chosen"],
             "p_low_resolution": params[7]["chosen"], "p_gamma_inverted": params[8]["chosen"],
             "p_gamma": params[9]["chosen"]}
    defaults = AugmentationParameters()
    for name, chosen in rates.items():
        expected = ref.get(name, getattr(defaults, name))
        if name == "p_blur":  # an example is blurred when one of its channels is (p 0.5 per channel)
            expected *= ref["blur.p_per_channel"]
        assert float(chosen.double().mean()) == pytest.approx(expected, abs=0.03), name
    flips = params[0]["flips"].double().mean(0)
    assert flips.tolist() == pytest.approx([ref["p_mirror"]] * 3, abs=0.03)
    # the warp: rotated or scaled with nnU-Net's probabilities, 1 - 0.8 * 0.8 = 36 % of the examples
    assert float(params[0]["warped"].double().mean()) == pytest.approx(
        1 - (1 - ref["p_rotation"]) * (1 - ref["p_scaling"]), abs=0.03)


@pytest.mark.parametrize("in_plane_only", [False, True])
def test_the_warp_draws_nnunets_rotation_and_scaling_ranges(in_plane_only):
    rotation = math.pi if in_plane_only else math.radians(30)
    scale_only = BatchedAffineWarp((8, 8, 8), [0.0], p_rotation=0.0, in_plane_only=in_plane_only, p_scaling=1.0,
                                   seed=1)
    matrix, displacement = scale_only.draw_affine(4000)
    scales = torch.diagonal(matrix, dim1=1, dim2=2)
    assert torch.equal(displacement, torch.zeros_like(displacement))
    assert torch.equal(scales[:, 0], torch.ones(4000, dtype=torch.float64)) if in_plane_only else torch.equal(
        scales[:, 0], scales[:, 1])
    assert torch.equal(scales[:, 1], scales[:, 2])  # one factor (nnU-Net: synchronised across axes)
    s = scales[:, 2]
    assert 0.7 <= float(s.min()) < 0.71 and 1.39 < float(s.max()) <= 1.4
    assert float(s.mean()) == pytest.approx(1.05, abs=0.01)  # uniform on (0.7, 1.4)
    rotate_only = BatchedAffineWarp((8, 8, 8), [0.0], p_rotation=1.0, rotation=rotation, in_plane_only=in_plane_only,
                                    p_scaling=0.0, seed=2)
    matrix, _ = rotate_only.draw_affine(4000)
    # about axis 0 alone the in-plane angle is atan2(m21, m11); in 3-D the cosine of the axis-0 rotation bounds
    # m00 = cos a1 cos a2 from below: the larger the range, the smaller m00 gets
    if in_plane_only:
        angle = torch.atan2(matrix[:, 2, 1], matrix[:, 1, 1])
        assert float(angle.abs().max()) > 0.99 * math.pi and float(angle.abs().mean()) == pytest.approx(
            math.pi / 2, abs=0.05)
    else:
        m00 = matrix[:, 0, 0]
        assert math.cos(rotation) ** 2 - 1e-9 <= float(m00.min()) < math.cos(rotation) ** 2 + 0.02


def test_augmentation_crop_size_pins_the_loader_crop_of_nnunets_plans():
    """The loader crops these sizes (regression pins; nnU-Net's own initial patch, from (0.85, 1.25) scaling,
    is smaller than what 1.4 x scaling reaches in 3-D, and keeps axis 0 in dummy 2-D as ours does)."""
    parameters = AugmentationParameters()
    iso, aniso = nnunet_plan(ISOTROPIC_PATCH), nnunet_plan(ANISOTROPIC_PATCH)
    ours_iso = augmentation_crop_size(parameters, ISOTROPIC_PATCH, math.radians(30))
    ours_aniso = augmentation_crop_size(parameters, ANISOTROPIC_PATCH, math.pi, in_plane_only=True)
    assert ours_iso == (312, 340, 342) and ours_aniso == (16, 350, 350)
    assert aniso.initial_patch_size[0] == ours_aniso[0] == ANISOTROPIC_PATCH[0]
    assert all(o > n for o, n in zip(ours_iso, iso.initial_patch_size))
    assert augmentation_crop_size(AugmentationParameters.disabled(), ISOTROPIC_PATCH) == ISOTROPIC_PATCH
    physical = augmentation_crop_size(AugmentationParameters(physical_rotation=True), (16, 64, 64),
                                      math.radians(30), spacing=(3.0, 0.8, 0.8))
    assert physical == (42, 150, 148)
    with pytest.raises(ValueError, match="spacing"):
        augmentation_crop_size(AugmentationParameters(physical_rotation=True), (16, 64, 64))


def test_rotation_deg_overrides_the_plans_rotation_and_spacing_is_passed_for_physical_rotations():
    parameters = AugmentationParameters(rotation_deg=10.0, physical_rotation=True, p_occlusion=0.4)
    pipeline = build_device_augmentation(parameters, (16, 32, 32), CT_STATS * 2, rotation=math.pi,
                                         mirror_axes=None, cranio_caudal_axis=2, spacing=(3.0, 0.8, 0.8),
                                         regions=[[1, 2], 2], ignore_label=3, seed=0)
    warp, occlusion, window = pipeline.transforms[0], pipeline.transforms[1], pipeline.transforms[3]
    assert warp.rotation == pytest.approx(math.radians(10)) and warp.spacing == (3.0, 0.8, 0.8)
    assert warp.mirror_axes == () and warp.image_fill == pytest.approx(((-1000 - 40) / 300,) * 2)
    assert (occlusion.axis, occlusion.p_occlusion, occlusion.image_fill) == (2, 0.4, warp.image_fill)
    assert window.ct_mean_std == [(40.0, 300.0)] * 2
    assert pipeline.transforms[-1].regions == [[1, 2], [2], [3]] and pipeline.transforms[-1].deep_supervision_scales \
        is None
    no_ignore = build_device_augmentation(parameters, (16, 32, 32), [None], spacing=(1.0, 1.0, 1.0),
                                          regions=[[1, 2]])
    assert no_ignore.transforms[-1].regions == [[1, 2]] and no_ignore.warp.image_fill == (0.0,)


def test_ct_channel_statistics_reads_the_plans_ct_normalisation():
    properties = {"0": {"mean": 40.0, "std": 300.0, "percentile_00_5": -1000.0},
                  1: {"mean": 1.0, "std": 0.0, "percentile_00_5": -2.0},
                  "2": {"mean": 5.0, "std": 2.0, "percentile_00_5": 0.0}}
    stats = ct_channel_statistics(["CTNormalization", "CTNormalization", "ZScoreNormalization", "CTNormalization"],
                                  properties)
    assert stats == [(40.0, 300.0, -1000.0), (1.0, 1e-8, -2.0), None, None]


def test_device_augmentation_refuses_a_pipeline_without_the_warp_and_mismatched_batches():
    with pytest.raises(ValueError, match="BatchedAffineWarp"):
        DeviceAugmentation([BatchedGaussianNoise()])
    with pytest.raises(ValueError, match="BatchedAffineWarp"):
        DeviceAugmentation([])
    pipeline = build_device_augmentation(AugmentationParameters.disabled(), (8, 8, 8), CT_STATS, seed=0)
    image, labels = torch.zeros((2, 1, 8, 8, 8)), torch.zeros((2, 1, 8, 8, 8), dtype=torch.int16)
    for bad_image, bad_labels in ((image[0], labels), (image, labels[0]), (image, labels[:1]),
                                  (image, labels[..., :7])):
        with pytest.raises(ValueError, match="expected image"):
            pipeline(bad_image, bad_labels)
    assert pipeline(image, labels)[0].shape == (2, 1, 8, 8, 8)


def test_reseed_gives_each_transform_its_own_stream():
    """Same seed, same draws; within one pipeline two transforms of the same probability draw differently."""
    parameters = AugmentationParameters().with_probabilities(p_noise=0.5, p_window=0.5, p_brightness=0.5,
                                                             p_contrast=0.5)
    a, b = (build_device_augmentation(parameters, (8, 8, 8), CT_STATS, seed=3) for _ in range(2))
    first, second = a.draw_parameters((64, 1, 8, 8, 8)), b.draw_parameters((64, 1, 8, 8, 8))
    assert all(torch.equal(x["chosen"], y["chosen"]) for x, y in zip(first[1:10], second[1:10]))
    chosen = [first[i]["chosen"] for i in (2, 3, 5, 6)]
    assert all(not torch.equal(x, y) for i, x in enumerate(chosen) for y in chosen[i + 1:])
    b.reseed(4)
    assert not torch.equal(b.draw_parameters((64, 1, 8, 8, 8))[2]["chosen"], first[2]["chosen"])
    b.reseed(3)
    assert torch.equal(b.draw_parameters((64, 1, 8, 8, 8))[2]["chosen"], first[2]["chosen"])


def test_parameters_stay_on_the_cpu_untouched_for_a_cpu_batch():
    params = [{"a": torch.ones(2), "b": 3}]
    moved = move_parameters(params, torch.device("cpu"))
    assert moved[0]["a"] is params[0]["a"] and moved[0]["host"] is params[0] and moved[0]["b"] == 3
    assert np.shares_memory(moved[0]["a"].numpy(), params[0]["a"].numpy())


def test_the_builders_defaults_are_nnunets_3d_plan():
    """Called without a plan's values, the pipeline and the crop use nnU-Net's 3-D full-resolution settings."""
    plan = nnunet_plan(ISOTROPIC_PATCH)
    ref = nnunet_values(plan)
    pipeline = build_device_augmentation(AugmentationParameters(), ISOTROPIC_PATCH, CT_STATS)
    assert pipeline.warp.rotation == pytest.approx(ref["rotation"]) and not pipeline.warp.in_plane_only
    assert pipeline.warp.mirror_axes == ref["mirror_axes"] and pipeline.transforms[1].axis == 0
    assert pipeline.transforms[-1].deep_supervision_scales is None and pipeline.transforms[-1].regions is None
    assert augmentation_crop_size(AugmentationParameters(), ISOTROPIC_PATCH) == augmentation_crop_size(
        AugmentationParameters(), ISOTROPIC_PATCH, ref["rotation"])


def test_packing_no_tensors_gives_an_empty_buffer():
    from nnunet_ctorg.augmentation.pipeline import pack_parameters, unpack_parameters

    assert pack_parameters([{}, {"a": 1}]).numel() == 0
    assert unpack_parameters([{"a": 1}], torch.zeros(0)) == [{"a": 1, "host": {"a": 1}}]
