"""The batched device transforms: geometry, labels, each paper operation, nnU-Net equivalence, seeds, CUDA."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_ctorg.augmentation import AugmentationParameters, build_device_augmentation
from nnunet_ctorg.augmentation.pipeline import move_parameters, pack_parameters, unpack_parameters
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
    gaussian_kernels,
    required_crop_size,
    rotation_matrices,
)

CT_STATS = [(40.0, 300.0, -1000.0)]  # mean, std, lower clip of a CT plan (HU)
AIR = (CT_STATS[0][2] - CT_STATS[0][0]) / CT_STATS[0][1]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _warp(patch, **kwargs) -> BatchedAffineWarp:
    defaults = {"p_rotation": 0.0, "p_scaling": 0.0, "p_shear": 0.0}
    return BatchedAffineWarp(patch, [AIR], **{**defaults, **kwargs})


def _coordinates(shape, n=2) -> torch.Tensor:
    """(n, 3, *shape): channel k holds the voxel coordinate along axis k (linear, so trilinear is exact)."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    return torch.stack(grids)[None].repeat(n, 1, 1, 1, 1)


def test_identity_parameters_give_the_input_back_exactly():
    rng = torch.Generator().manual_seed(0)
    image = torch.randn((2, 2, 12, 10, 14), generator=rng)
    labels = torch.randint(0, 7, (2, 1, 12, 10, 14), generator=rng).to(torch.int16)
    out = _warp((12, 10, 14), seed=1)(image=image.clone(), segmentation=labels.clone())
    assert torch.equal(out["image"], image) and torch.equal(out["segmentation"], labels)

    disabled = build_device_augmentation(AugmentationParameters.disabled(), (12, 10, 14), CT_STATS * 2,
                                         mirror_axes=(0, 1, 2), seed=3)
    image_out, target = disabled(image.clone(), labels.clone())
    assert torch.equal(image_out, image) and torch.equal(target, labels)


def test_affine_maps_every_voxel_as_a_c_plus_d_and_the_centre_to_c_plus_d():
    """Input = its own voxel coordinates: the output must equal A (x - c) + c + o + d inside the crop."""
    crop, patch = (41, 37, 45), (21, 21, 21)
    warp = _warp(patch, p_rotation=1.0, rotation=math.radians(30), p_scaling=1.0, scaling=(0.8, 1.2), p_shear=1.0,
                 shear=0.1, affine_noise=0.02, displacement=3.0, seed=5)
    image = _coordinates(crop)
    params = warp.get_parameters(image=image)
    out = warp.apply({"image": image.clone(), "segmentation": torch.zeros((2, 1, *crop), dtype=torch.int16)},
                     **params)
    matrix, displacement = params["matrix"], params["displacement"]
    assert not torch.allclose(matrix[0], torch.eye(3, dtype=torch.float64))
    x = _coordinates(patch, 1)[0].reshape(3, -1).double()
    c = torch.tensor([(s - 1) / 2 for s in patch], dtype=torch.float64)[:, None]
    offset = torch.tensor([(i - p) // 2 for i, p in zip(crop, patch)], dtype=torch.float64)[:, None]
    for b in range(2):
        expected = matrix[b] @ (x - c) + c + offset + displacement[b][:, None]
        got = out["image"][b].reshape(3, -1).double()
        inside = ((expected >= 0) & (expected <= torch.tensor(crop, dtype=torch.float64)[:, None] - 1)).all(0)
        assert inside.float().mean() > 0.9
        assert torch.allclose(got[:, inside], expected[:, inside], atol=2e-3)
        centre = got[:, x.shape[1] // 2]  # voxel (10, 10, 10) = c
        assert torch.allclose(centre, (c + offset)[:, 0] + displacement[b], atol=2e-3)


def test_grid_path_with_a_whole_voxel_shift_is_a_shift():
    warp = _warp((10, 10, 10), seed=0)
    warp.draw_affine = lambda n: (torch.eye(3, dtype=torch.float64).repeat(n, 1, 1),
                                  torch.tensor([[1.0, 0.0, -2.0]] * n, dtype=torch.float64))
    image = torch.randn((2, 1, 14, 14, 14))
    labels = torch.randint(0, 5, (2, 1, 14, 14, 14), dtype=torch.int16)
    out = warp(image=image.clone(), segmentation=labels.clone())
    assert torch.allclose(out["image"], image[:, :, 3:13, 2:12, 0:10], atol=1e-5)
    assert torch.equal(out["segmentation"], labels[:, :, 3:13, 2:12, 0:10])


def test_outside_the_volume_is_air_and_background_as_in_nnunets_validation():
    """One rule for out-of-volume labels: background (nnU-Net's RemoveLabelTansform(-1, 0)), ignore label or not."""
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    for interpolation in ("nearest", "linear"):
        warp = _warp((8, 8, 8), label_interpolation=interpolation, seed=0)
        warp.draw_affine = lambda n: (torch.eye(3, dtype=torch.float64).repeat(n, 1, 1),
                                      torch.tensor([[6.0, 0.0, 0.0]] * n, dtype=torch.float64))
        image = torch.zeros((1, 1, 8, 8, 8))
        labels = torch.full((1, 1, 8, 8, 8), 3, dtype=torch.int16)
        labels[:, :, :, :2] = -1  # the loader's padding
        out = warp(image=image.clone(), segmentation=labels.clone())
        assert torch.allclose(out["image"][0, 0, 2:, 2:], torch.full((6, 6, 8), AIR))  # beyond the crop
        assert torch.allclose(out["image"][0, 0, :2, :2], torch.full((2, 2, 8), AIR))  # the loader's padding
        assert torch.allclose(out["image"][0, 0, :2, 2:], torch.zeros(2, 6, 8), atol=1e-6)
        assert set(out["segmentation"].unique().tolist()) == {0, 3}
        assert (out["segmentation"][0, 0, 2:] == 0).all() and (out["segmentation"][0, 0, :2, :2] == 0).all()
    # what nnU-Net's validation pipeline does with the same padding
    validation = RemoveLabelTansform(-1, 0)(segmentation=labels[0].clone())["segmentation"]
    assert set(validation.unique().tolist()) == {0, 3} and (validation[:, :, :2] == 0).all()


def test_rotation_matrices_are_rotations():
    angles = torch.tensor([[0.3, -0.2, 1.1], [0.0, 0.0, 0.0]], dtype=torch.float64)
    r = rotation_matrices(angles)
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(2, 3, 3))
    assert torch.allclose(torch.linalg.det(r), torch.ones(2, dtype=torch.float64))
    assert torch.equal(r[1], torch.eye(3, dtype=torch.float64))


def test_in_plane_only_keeps_the_first_axis():
    warp = _warp((8, 8, 8), p_rotation=1.0, rotation=math.pi, in_plane_only=True, p_scaling=1.0, p_shear=1.0,
                 seed=2)
    matrix, _ = warp.draw_affine(16)
    assert torch.allclose(matrix[:, 0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(16, 3))
    assert torch.allclose(matrix[:, :, 0], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(16, 3))


def test_labels_keep_their_set_and_stay_aligned_with_the_image_on_a_phantom(phantom):
    ct = torch.from_numpy(phantom.ct)[None, None].float()
    labels = torch.from_numpy(phantom.organ_labels().astype(np.int16))[None, None]
    image = ((ct - CT_STATS[0][0]) / CT_STATS[0][1]).repeat(4, 1, 1, 1, 1)
    labels = labels.repeat(4, 1, 1, 1, 1)
    patch = tuple(int(s * 0.7) for s in image.shape[2:])
    warp = BatchedAffineWarp(patch, [AIR], p_rotation=1.0, p_scaling=1.0, p_shear=1.0, seed=4)
    out = warp(image=image.clone(), segmentation=labels.clone())
    assert set(out["segmentation"].unique().tolist()) <= set(labels.unique().tolist())
    hu = out["image"] * CT_STATS[0][1] + CT_STATS[0][0]
    organs = phantom.organ_labels()
    checked = 0
    for organ in np.unique(organs)[1:]:
        low, high = np.percentile(phantom.ct[organs == organ], [2, 98])
        mask = out["segmentation"] == int(organ)
        if mask.sum() > 50:  # the organ is in the warped patch
            inside = ((hu[mask] >= low - 50) & (hu[mask] <= high + 50)).double().mean()
            assert inside > 0.85, (organ, float(inside))
            checked += 1
        # the same check fails when the labels are flipped against the image (the test can fail)
        flipped = out["segmentation"].flip(3) == int(organ)
        if organ == 1 and flipped.sum() > 50:
            assert ((hu[flipped] >= low - 50) & (hu[flipped] <= high + 50)).double().mean() < 0.85
    assert checked >= 4


def test_real_ct_warped_labels_keep_their_organs_hu(real_ct_dir):
    """On a real CT with TotalSegmentator labels, the mean HU under each warped organ stays in its range."""
    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz"))).astype(np.int16)
    names = json.loads((real_ct_dir / "example_seg_labels.json").read_text())
    groups = {"liver": ([5], (25, 65)), "spleen": ([1], (10, 55)), "lungs": ([10, 11, 12, 13, 14], (-1000, -550)),
              "vertebrae": ([k for k, v in names.items() if v.startswith("vertebrae")], (120, 400))}
    image = torch.from_numpy((ct - CT_STATS[0][0]) / CT_STATS[0][1])[None, None].repeat(8, 1, 1, 1, 1)
    labels = torch.from_numpy(seg)[None, None].repeat(8, 1, 1, 1, 1)
    pipeline = build_device_augmentation(
        AugmentationParameters(p_noise=0, p_window=0, p_blur=0, p_brightness=0, p_contrast=0, p_low_resolution=0,
                               p_gamma=0, p_gamma_inverted=0).with_probabilities(p_rotation=1.0, p_scaling=1.0),
        (24, 80, 96), CT_STATS, seed=11)
    out, target = pipeline(image, labels)
    hu = out * CT_STATS[0][1] + CT_STATS[0][0]
    assert set(target.unique().tolist()) <= set(np.unique(seg).tolist())
    for organ, (ids, (low, high)) in groups.items():
        mask = torch.isin(target, torch.tensor([int(i) for i in ids], dtype=target.dtype))
        assert mask.sum() > 100, organ
        assert low < float(hu[mask].mean()) < high, (organ, float(hu[mask].mean()))


def test_occlusion_covers_the_drawn_slab_with_air_and_background():
    occlusion = BatchedSlabOcclusion(axis=0, image_fill=[AIR], p_occlusion=1.0, max_fraction=0.5, seed=3)
    image, labels = torch.ones((6, 1, 20, 4, 4)), torch.full((6, 1, 20, 4, 4), 2, dtype=torch.int16)
    params = occlusion.get_parameters(image=image)
    out = occlusion.apply({"image": image.clone(), "segmentation": labels.clone()}, **params)
    z = torch.arange(20, dtype=torch.float64)
    for b in range(6):
        start, delta = float(params["start"][b]), float(params["delta"][b])
        assert -10 <= start <= 20 and 0 <= delta <= 10
        hidden = (z >= start) & (z <= start + delta)
        assert torch.all(out["image"][b, 0, hidden] == AIR) and torch.all(out["image"][b, 0, ~hidden] == 1)
        assert torch.all(out["segmentation"][b, 0, hidden] == 0) and torch.all(out["segmentation"][b, 0, ~hidden] == 2)
    # every slice equally likely to be hidden: coverage of the end slices ~ coverage of the middle
    many = BatchedSlabOcclusion(axis=0, image_fill=[AIR], p_occlusion=1.0, max_fraction=0.5, seed=4)
    coverage = many.get_parameters(image=torch.zeros((20000, 1, 20, 1, 1)))["mask"].double().mean(0)
    assert float(coverage.max() - coverage.min()) < 0.03


def test_window_clamps_in_hu_and_keeps_z_scores():
    window = BatchedHUWindow([CT_STATS[0][:2], None], p_window=1.0, lower_hu=(-200, -100), upper_hu=(100, 300),
                             seed=0)
    hu = torch.linspace(-1000, 1500, 1000).reshape(1, 1, 10, 10, 10).repeat(3, 2, 1, 1, 1)
    image = (hu - CT_STATS[0][0]) / CT_STATS[0][1]
    params = window.get_parameters(image=image)
    out = window.apply({"image": image.clone()}, **params)["image"]
    for b in range(3):
        a, c = float(params["lower"][b]), float(params["upper"][b])
        expected = (hu[b, 0].clamp(a, c) - CT_STATS[0][0]) / CT_STATS[0][1]
        assert torch.allclose(out[b, 0], expected, atol=1e-5)
    assert torch.equal(out[:, 1], image[:, 1])  # a channel that is not CT is left alone


def test_noise_sigma_is_drawn_per_example_and_at_most_nnunets():
    noise = BatchedGaussianNoise(p_noise=1.0, sigma_max=2.0, seed=1)
    image = torch.zeros((4, 1, 40, 40, 40))
    params = noise.get_parameters(image=image)
    out = noise.apply({"image": image.clone()}, **params)["image"]
    stds = out.flatten(1).std(1).double()
    assert torch.allclose(stds, params["sigma"], rtol=0.02)
    assert float(params["sigma"].max() - params["sigma"].min()) > 0.2
    # the default: nnU-Net draws "noise_variance" in (0, 0.1) and uses it as the standard deviation
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform

    theirs = GaussianNoiseTransform(noise_variance=(0.1, 0.1), p_per_channel=1, synchronize_channels=True)
    their_std = float(theirs(image=torch.zeros((1, 40, 40, 40)))["image"].std())
    assert their_std == pytest.approx(0.1, rel=0.02)
    assert AugmentationParameters().noise_sigma_max == pytest.approx(their_std, rel=0.02)
    default = BatchedGaussianNoise(p_noise=1.0, seed=2)
    assert float(default.get_parameters(image=torch.zeros((500, 1, 1, 1, 1)))["sigma"].max()) <= 0.1


def _forced(transform, image, **values):
    """The transform's parameters for ``image`` with every example chosen and the given values."""
    params = transform.get_parameters(image=image)
    params["chosen"] = torch.ones_like(params["chosen"])
    for key, value in values.items():
        params[key] = torch.full_like(params[key], value) if not isinstance(value, torch.Tensor) else value
    return params


def _batch_of(transform_per_example, image: torch.Tensor) -> torch.Tensor:
    return torch.stack([transform_per_example(image=image[b].clone())["image"] for b in range(image.shape[0])])


def _real_ct_patch(real_ct_dir, shape=(24, 40, 40)) -> torch.Tensor:
    """A z-scored block of the real CT, two examples (two positions) and two channels (CT, CT^2 scaled)."""
    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))).astype(np.float32)
    z = (np.maximum(ct, -1000) - CT_STATS[0][0]) / CT_STATS[0][1]
    blocks = [z[:shape[0], 30:30 + shape[1], 20:20 + shape[2]], z[-shape[0]:, 50:50 + shape[1], 60:60 + shape[2]]]
    image = torch.from_numpy(np.stack(blocks))[:, None]
    return torch.cat([image, image ** 2 / 4], dim=1).contiguous()


def _assert_matches_but_not_a_mutant(ours, theirs, mutant, x, atol=1e-5):
    """ours == nnU-Net's transform; the mutant (identity or wrong constant) is far from it (the test can fail)."""
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=1e-5)
    assert float((theirs - x).abs().max()) > 1000 * atol  # the operation is not the identity here
    assert float((mutant - theirs).abs().max()) > 100 * atol


def test_brightness_equals_nnunets_at_fixed_parameters(real_ct_dir):
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform

    x = _real_ct_patch(real_ct_dir)
    t = BatchedBrightness(p_brightness=1.0, seed=0)
    ours = t.apply({"image": x.clone()}, **_forced(t, x, multiplier=1.2))["image"]
    theirs = _batch_of(MultiplicativeBrightnessTransform((1.2, 1.2), synchronize_channels=False), x)
    mutant = _batch_of(MultiplicativeBrightnessTransform((1.2 ** 2, 1.2 ** 2), synchronize_channels=False), x)
    _assert_matches_but_not_a_mutant(ours, theirs, mutant, x)


def test_contrast_equals_nnunets_at_fixed_parameters(real_ct_dir):
    from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform

    x = _real_ct_patch(real_ct_dir)
    for factor in (0.8, 1.2):
        t = BatchedContrast(p_contrast=1.0, seed=0)
        ours = t.apply({"image": x.clone()}, **_forced(t, x, factor=factor))["image"]
        theirs = _batch_of(ContrastTransform((factor, factor), preserve_range=True, synchronize_channels=False), x)
        mutant = _batch_of(ContrastTransform((factor, factor), preserve_range=False, synchronize_channels=False), x) \
            if factor > 1 else _batch_of(ContrastTransform((1 / factor, 1 / factor), True, False), x)
        _assert_matches_but_not_a_mutant(ours, theirs, mutant, x, atol=2e-5)


@pytest.mark.parametrize("invert", [False, True])
def test_gamma_equals_nnunets_at_fixed_parameters(real_ct_dir, invert):
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform

    x = _real_ct_patch(real_ct_dir)
    for g in (0.7, 1.4):
        t = BatchedGamma(p_gamma=1.0, invert=invert, seed=0)
        ours = t.apply({"image": x.clone()}, **_forced(t, x, gamma=g))["image"]
        theirs = _batch_of(GammaTransform((g, g), p_invert_image=float(invert), synchronize_channels=False,
                                          p_per_channel=1, p_retain_stats=1), x)
        mutant = _batch_of(GammaTransform((1 / g ** 2, 1 / g ** 2), p_invert_image=float(invert),
                                          synchronize_channels=False, p_per_channel=1, p_retain_stats=1), x)
        _assert_matches_but_not_a_mutant(ours, theirs, mutant, x, atol=1e-4)
    # the other direction of inversion is a different operation
    wrong_direction = _batch_of(GammaTransform((1.4, 1.4), p_invert_image=float(not invert), synchronize_channels=False,
                                               p_per_channel=1, p_retain_stats=1), x)
    assert float((wrong_direction - ours).abs().max()) > 1e-2


def test_blur_equals_nnunets_with_a_sigma_per_axis(real_ct_dir):
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform

    x = _real_ct_patch(real_ct_dir)
    sigmas = (0.55, 0.8, 1.0)
    t = BatchedGaussianBlur(p_blur=1.0, p_per_channel=1.0, seed=0)
    t._uniform = lambda low, high, size: torch.tensor(sigmas, dtype=torch.float64).expand(*size).clone()
    ours = t.apply({"image": x.clone()}, **t.get_parameters(image=x))["image"]

    def theirs_with(s):
        return _batch_of(GaussianBlurTransform(lambda shape, dim: s[dim - 1], synchronize_channels=False,
                                               synchronize_axes=False, p_per_channel=1), x)

    _assert_matches_but_not_a_mutant(ours, theirs_with(sigmas), theirs_with(sigmas[::-1]), x, atol=2e-5)
    # channels and examples not drawn keep their values exactly (identity kernels)
    t.p_per_channel = 0.0
    assert torch.equal(t.apply({"image": x.clone()}, **t.get_parameters(image=x))["image"], x)
    assert torch.equal(gaussian_kernels(torch.zeros(2, dtype=torch.float64), 3)[:, 3], torch.ones(2))


def test_low_resolution_equals_nnunets_at_fixed_parameters(real_ct_dir):
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform

    x = _real_ct_patch(real_ct_dir)
    for ignore_axes in ((), (0,)):
        t = BatchedLowResolution(p_low_resolution=1.0, scale=(0.6, 0.6), p_per_channel=1.0, ignore_axes=ignore_axes,
                                 seed=0)
        ours = t.apply({"image": x.clone()}, **t.get_parameters(image=x))["image"]

        def theirs_with(scale, ignore=ignore_axes):
            return _batch_of(SimulateLowResolutionTransform((scale, scale), synchronize_channels=False,
                                                            synchronize_axes=True, ignore_axes=ignore or None,
                                                            p_per_channel=1), x)

        _assert_matches_but_not_a_mutant(ours, theirs_with(0.6), theirs_with(0.8), x)


def test_window_and_occlusion_leave_examples_not_drawn_untouched():
    image = torch.randn((8, 1, 10, 6, 6)) * 3
    window = BatchedHUWindow([CT_STATS[0][:2]], p_window=0.5, lower_hu=(-200, -100), upper_hu=(100, 300), seed=3)
    params = window.get_parameters(image=image)
    out = window.apply({"image": image.clone()}, **params)["image"]
    chosen = params["chosen"]
    assert 0 < int(chosen.sum()) < 8
    assert torch.equal(out[~chosen], image[~chosen]) and not torch.equal(out[chosen], image[chosen])


def test_mirroring_is_folded_into_the_warp_for_interpolated_examples_and_exact_otherwise():
    crop, patch = (13, 14, 15), (9, 10, 11)
    image = _coordinates(crop, 8)
    centre = (slice(None), slice(None), slice(2, 11), slice(2, 12), slice(2, 13))
    labels = (image[:, :1] * 7 + image[:, 1:2] * 3 + image[:, 2:]).to(torch.int16) % 5
    for p_rotation in (0.0, 1.0):
        warp = _warp(patch, p_rotation=p_rotation, rotation=1e-3 if p_rotation else 0.0, mirror_axes=(0, 2),
                     p_mirror=0.5, seed=4)
        params = warp.get_parameters(image=image)
        out = warp.apply({"image": image.clone(), "segmentation": labels.clone()}, **params)
        flips = params["flips"]
        assert not flips[:, 1].any() and flips[:, 0].any() and not flips[:, 0].all()
        for b in range(8):
            axes = [2 + a for a in range(3) if flips[b, a]]
            expected = image[centre][b:b + 1].flip(axes) if axes else image[centre][b:b + 1]
            atol = 0.02 if p_rotation else 0.0  # a 1e-3 rad rotation moves a corner by < 0.01 voxel
            torch.testing.assert_close(out["image"][b:b + 1], expected, atol=atol, rtol=0)
            expected_labels = labels[centre][b:b + 1].flip(axes) if axes else labels[centre][b:b + 1]
            assert (out["segmentation"][b:b + 1] == expected_labels).double().mean() > 0.99


def _nnunet_spatial_output(patch, crop_image, crop_labels, matrix):
    """nnU-Net's SpatialTransform (its trainer's settings) applied with a given affine matrix, per example."""
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform, _convert_my_grid_to_grid_sample_grid

    spatial = SpatialTransform(patch, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                               p_rotation=0.2, rotation=0.5, p_scaling=0.2, scaling=(0.7, 1.4),
                               p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False,
                               border_mode_seg="constant", padding_value_seg=-1)
    grid = spatial._get_base_grid_clone() @ matrix.T.float()
    params = {"grid": _convert_my_grid_to_grid_sample_grid(grid, crop_image.shape[2:]),
              "center_location_in_pixels": [s / 2 for s in crop_image.shape[2:]]}
    images = torch.stack([spatial._apply_to_image(crop_image[b], **params) for b in range(crop_image.shape[0])])
    labels = torch.stack([spatial._apply_to_segmentation(crop_labels[b], **params)
                          for b in range(crop_labels.shape[0])])
    return images, labels.clamp(min=0)  # RemoveLabelTansform(-1, 0)


def test_warp_with_linear_labels_equals_nnunets_spatial_transform_on_the_real_ct(real_ct_dir):
    """Same affine, same real CT and TotalSegmentator labels: our batch equals nnU-Net's SpatialTransform."""
    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))).astype(np.float32)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / "example_seg.nii.gz"))).astype(np.int16)
    patch = (20, 40, 40)  # from a 30 x 64 x 64 crop
    image = torch.from_numpy((ct[:30, 20:84, 30:94] - CT_STATS[0][0]) / CT_STATS[0][1])[None, None].contiguous()
    labels = torch.from_numpy(seg[:30, 20:84, 30:94])[None, None].contiguous()
    labels[..., :6] = -1  # some of the loader's padding
    image = torch.cat([image, (labels >= 0).float()], dim=1)  # channel 1 tells where the scan was sampled
    angles = torch.tensor([[0.25, -0.1, 0.15]], dtype=torch.float64)
    results = {}
    for scale in (0.75, 1.15):
        matrix = rotation_matrices(angles)[0] @ torch.diag(torch.tensor([scale] * 3, dtype=torch.float64))
        theirs_image, theirs_labels = _nnunet_spatial_output(patch, image, labels, matrix)
        for interpolation in ("linear", "nearest"):
            warp = BatchedAffineWarp(patch, [AIR, 0.0], 0.0, 0.0, p_scaling=0.0,
                                     label_interpolation=interpolation, seed=0)
            warp.draw_affine = lambda n, m=matrix: (m.repeat(n, 1, 1), torch.zeros((n, 3), dtype=torch.float64))
            out = warp(image=image.clone(), segmentation=labels.clone())
            results[scale, interpolation] = (out["segmentation"] != theirs_labels).double().mean().item()
            # nnU-Net pads the image with 0 (mean tissue), we with air: compare where only the scan was sampled
            scan = theirs_image[:, 1] > 1 - 1e-5
            assert scan.double().mean() > 0.5
            torch.testing.assert_close(out["image"][:, 0][scan], theirs_image[:, 0][scan], atol=2e-4, rtol=0)
        assert results[scale, "linear"] < 1e-3, results  # float16 scores and ties may differ on a few voxels
        assert results[scale, "nearest"] > 10 * max(results[scale, "linear"], 1e-4), results  # the test can fail


def test_crop_from_our_ranges_holds_every_sampled_point_where_nnunets_does_not():
    """Every grid point of the widest warps lies inside the crop ``augmentation_crop_size`` gives."""
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    from nnunet_ctorg.augmentation import augmentation_crop_size

    patch = (24, 24, 24)
    cases = [(AugmentationParameters(), False, None),
             (AugmentationParameters(p_shear=0.5, affine_noise=0.02, displacement_vox=2.0), False, None),
             (AugmentationParameters(physical_rotation=True), False, (2.5, 0.8, 0.8)),
             (AugmentationParameters(), True, None)]
    for parameters, in_plane_only, spacing in cases:
        rotation = math.pi if in_plane_only else math.radians(30)
        crop = augmentation_crop_size(parameters, patch, rotation, in_plane_only, spacing)
        warp = BatchedAffineWarp(patch, [AIR], 1.0, rotation, in_plane_only, 1.0, (parameters.scaling[1],) * 2,
                                 1.0 if parameters.p_shear else 0.0, parameters.shear, parameters.affine_noise,
                                 0.0, parameters.displacement_vox, (0, 1, 2), 0.5,
                                 spacing if parameters.physical_rotation else None, seed=1)
        params = warp.get_parameters(image=torch.empty((4000, 1, *crop), device="meta"))
        grid = F.affine_grid(params["theta"].float(), [4000, 1, 2, 2, 2], align_corners=True)  # the patch corners
        reach = float(grid.abs().amax())  # grid coordinates of the box read, a box clamped to the crop
        assert reach <= 1.0 + 1e-6, (parameters, crop, reach)
        box_shape = params["box"][1]
        assert max(b / c for b, c in zip(box_shape, crop)) > 0.8, (crop, box_shape)  # not wastefully large
    nnunet_crop = get_patch_size(patch, *(((-math.radians(30), math.radians(30)),) * 3), (0.85, 1.25))
    warp = BatchedAffineWarp(patch, [AIR], 1.0, math.radians(30), False, 1.0, (1.4, 1.4), seed=1)
    theta = warp.get_parameters(image=torch.empty((4000, 1, *nnunet_crop), device="meta"))["theta"]
    assert float(F.affine_grid(theta.float(), [4000, 1, 2, 2, 2], align_corners=True).abs().amax()) > 1.1


def test_physical_rotation_keeps_angles_in_millimetres():
    spacing = torch.tensor([3.0, 0.8, 0.8], dtype=torch.float64)
    for physical in (False, True):
        warp = _warp((8, 8, 8), p_rotation=1.0, rotation=math.radians(30), spacing=spacing.tolist() if physical
                     else None, seed=2)
        matrix, _ = warp.draw_affine(64)
        in_mm = torch.diag(spacing) @ matrix @ torch.diag(1 / spacing)  # the warp seen in millimetres
        singular = torch.linalg.svdvals(in_mm)
        distortion = float((singular[:, 0] / singular[:, 2]).max())
        if physical:
            assert distortion == pytest.approx(1.0, abs=1e-9)  # a rotation in mm: no stretch
        else:
            assert distortion > 1.5  # voxel rotations on a 3 x 0.8 mm grid stretch anatomy


class _TransferCounter:
    """Counts host-to-device copies: CPU tensors with elements becoming tensors on another device, and
    ``torch.tensor`` / ``torch.as_tensor`` building data on another device (a copy the dispatcher never sees)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.transfers = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                leaves = torch.utils._pytree.tree_leaves((args, kwargs or {}))
                from_host = any(isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.ndim > 0 for a in leaves)
                to_device = any(isinstance(o, torch.Tensor) and o.device.type != "cpu"
                                for o in torch.utils._pytree.tree_leaves(out))
                if from_host and to_device:
                    counter.transfers.append(str(func))
                return out

        def recording(factory):
            def build(*args, **kwargs):
                device = kwargs.get("device")
                if device is not None and torch.device(device).type != "cpu":
                    counter.transfers.append(factory.__name__)
                return factory(*args, **kwargs)
            return build

        self.factories = {name: getattr(torch, name) for name in ("tensor", "as_tensor")}
        for name, factory in self.factories.items():
            setattr(torch, name, recording(factory))
        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        for name, factory in self.factories.items():
            setattr(torch, name, factory)


def test_pipeline_reads_nothing_back_from_the_device_and_copies_parameters_once():
    """On the meta device every data-dependent step (``.item()``, ``nonzero``, boolean-mask gathers, Python
    ``if`` on a device tensor) raises, so a run there proves the pipeline would not synchronise a GPU."""
    every = AugmentationParameters().with_probabilities(**{
        f.name: 1.0 for f in dataclasses.fields(AugmentationParameters) if f.name.startswith("p_")})
    every = dataclasses.replace(every, p_reflection=0.5)
    pipeline = build_device_augmentation(every, (16, 16, 16), CT_STATS * 2,
                                         deep_supervision_scales=[[1] * 3, [0.5] * 3],
                                         regions=[[1, 2], 2], ignore_label=3, seed=0)
    image = torch.empty((3, 2, 40, 40, 40), device="meta")
    labels = torch.empty((3, 1, 40, 40, 40), dtype=torch.int16, device="meta")
    with _TransferCounter() as counter:
        out, targets = pipeline(image, labels)
    assert out.shape == (3, 2, 16, 16, 16) and [t.shape for t in targets] == [(3, 3, 16, 16, 16), (3, 3, 8, 8, 8)]
    assert len(counter.transfers) == 1, counter.transfers
    # controls: the counter sees a stray copy, and meta refuses a boolean-mask gather
    with _TransferCounter() as counter:
        torch.as_tensor([1.0, 2.0], device="meta")
        torch.ones(2).to("meta")
    assert len(counter.transfers) == 2
    with pytest.raises(NotImplementedError, match="nonzero"):
        image[torch.ones(3, dtype=torch.bool, device="meta")]


def test_parameters_reach_the_device_unchanged_in_one_buffer():
    warp = _warp((8, 8, 8), p_rotation=1.0, mirror_axes=(1,), seed=0)
    params = warp.get_parameters(image=torch.empty((3, 1, 12, 12, 12), device="meta"))
    moved = move_parameters([params], torch.device("meta"))[0]
    assert moved["host"] is params and moved["theta"].device.type == "meta"
    assert moved["flips"].dtype == torch.bool and moved["theta"].shape == params["theta"].shape
    assert move_parameters([params], torch.device("cpu"))[0]["theta"] is params["theta"]


def test_targets_match_nnunets_region_and_deep_supervision_transforms():
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

    labels = torch.randint(0, 4, (2, 1, 16, 12, 20), dtype=torch.int16)
    scales = [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]
    ours = BatchedTrainingTargets(scales)(segmentation=labels.clone())["segmentation"]
    for b in range(2):
        theirs = DownsampleSegForDSTransform(scales)(segmentation=labels[b].clone())["segmentation"]
        for o, t in zip(ours, theirs):
            assert torch.equal(o[b], t)
    regions = [[1, 2, 3], [2, 3], 3]
    ours = BatchedTrainingTargets(None, regions)(segmentation=labels.clone())["segmentation"]
    theirs = ConvertSegmentationToRegionsTransform(regions)(segmentation=labels[0].clone())["segmentation"]
    assert torch.equal(ours[0], theirs)


def test_pipeline_is_deterministic_per_seed():
    params = AugmentationParameters().with_probabilities(p_rotation=1.0, p_noise=1.0, p_blur=1.0, p_occlusion=1.0)
    image = torch.randn((2, 1, 30, 30, 30))
    labels = torch.randint(0, 3, (2, 1, 30, 30, 30), dtype=torch.int16)
    runs = [build_device_augmentation(params, (20, 20, 20), CT_STATS, deep_supervision_scales=[[1, 1, 1], [0.5] * 3],
                                      seed=seed)(image.clone(), labels.clone())
            for seed in (7, 7, 8)]
    assert torch.equal(runs[0][0], runs[1][0]) and all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert not torch.equal(runs[0][0], runs[2][0])


@pytest.mark.parametrize("bad", [{"p_rotation": 1.5}, {"scaling": (1.4, 0.7)}, {"shear": -0.1},
                                 {"window_lower_hu": (-100.0, 400.0)}, {"occlusion_max_fraction": 2.0}])
def test_bad_parameters_are_refused_quoting_the_value(bad):
    with pytest.raises(ValueError, match=str(next(iter(bad.values())))[:4].replace("(", r"\(")):
        AugmentationParameters(**bad)


def test_bad_transform_arguments_are_refused():
    with pytest.raises(ValueError, match="patch_size"):
        BatchedAffineWarp((8, 8), [0.0])
    with pytest.raises(ValueError, match="axis"):
        BatchedSlabOcclusion(axis=3, image_fill=[0.0])
    with pytest.raises(ValueError, match="smaller than the patch"):
        _warp((8, 8, 8))(image=torch.zeros((1, 1, 6, 8, 8)), segmentation=torch.zeros((1, 1, 6, 8, 8)))


def _cuda_inputs(pin: bool = False):
    rng = torch.Generator().manual_seed(0)
    image = torch.randn((2, 1, 48, 48, 48), generator=rng)
    labels = torch.randint(0, 6, (2, 1, 48, 48, 48), generator=rng, dtype=torch.int16)
    labels[:, :, :4] = -1
    return (image.pin_memory(), labels.pin_memory()) if pin else (image, labels)


EVERYTHING_BUT_NOISE = AugmentationParameters(p_noise=0.0).with_probabilities(
    p_rotation=1.0, p_scaling=1.0, p_shear=1.0, p_occlusion=1.0, p_window=1.0, p_blur=1.0, p_brightness=1.0,
    p_contrast=1.0, p_gamma=1.0, p_low_resolution=1.0)


@CUDA
@pytest.mark.parametrize("tf32", [False, True])
def test_cpu_and_cuda_give_the_same_batch(tf32, monkeypatch):
    """TF32 (the default for cuDNN convolutions on Ampere and later) rounds the blur's inputs to 10 mantissa
    bits: about 1e-3 relative, so the tolerance follows the setting instead of hiding it. Gamma is left out:
    x^γ with γ < 1 has an unbounded slope at the minimum, so any rounding difference there is amplified (it
    is compared with batchgeneratorsv2 on the CPU, and runs the same torch operations on CUDA)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", tf32)
    image, labels = _cuda_inputs()
    outputs = []
    lipschitz = dataclasses.replace(EVERYTHING_BUT_NOISE, p_gamma=0.0, p_gamma_inverted=0.0)
    for device in ("cpu", "cuda"):
        pipeline = build_device_augmentation(lipschitz, (32, 32, 32), CT_STATS,
                                             deep_supervision_scales=[[1, 1, 1]], seed=21)
        out, target = pipeline(image.to(device), labels.to(device))
        outputs.append((out.cpu(), target[0].cpu()))
    torch.testing.assert_close(outputs[0][0], outputs[1][0], atol=1e-2 if tf32 else 1e-4, rtol=0)
    assert (outputs[0][1] != outputs[1][1]).double().mean() < 1e-3  # float16 label scores on CUDA


@CUDA
def test_cuda_pipeline_never_synchronises_the_host():
    image, labels = _cuda_inputs(pin=True)
    everything = dataclasses.replace(EVERYTHING_BUT_NOISE, p_noise=1.0, p_gamma_inverted=1.0)
    pipeline = build_device_augmentation(everything, (32, 32, 32), CT_STATS,
                                         deep_supervision_scales=[[1, 1, 1], [0.5] * 3], seed=0)
    image, labels = image.to("cuda", non_blocking=True), labels.to("cuda", non_blocking=True)
    pipeline(image, labels)  # first call: generators and kernels set up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out, targets = pipeline(image, labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.is_cuda and all(t.is_cuda for t in targets)
    # control: a read-back in the same mode raises
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            out.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_linear_labels_are_closer_to_the_analytic_truth_than_nearest():
    """The boundary comparison behind the default (benchmarks/label_interpolation.py, smaller): on analytic
    ellipsoids, linear-then-argmax mislabels fewer boundary voxels than nearest at every scale."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "label_interpolation.py"
    spec = importlib.util.spec_from_file_location("label_interpolation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.compare(size=48, n_labels=6, seed=1)
    for scale, nearest, _, linear, _ in rows:
        assert nearest > 0.01, (scale, nearest)  # boundaries exist and nearest gets some wrong
        assert linear < 0.8 * nearest, (scale, nearest, linear)
    assert AugmentationParameters().label_interpolation == "linear"


def test_parameters_survive_the_one_buffer_round_trip_booleans_included():
    warp = _warp((8, 8, 8), p_rotation=0.5, mirror_axes=(0, 2), seed=3)
    noise = BatchedGaussianNoise(p_noise=0.5, seed=4)
    params = [warp.get_parameters(image=torch.empty((6, 1, 12, 12, 12), device="meta")),
              noise.get_parameters(image=torch.empty((6, 1, 8, 8, 8), device="meta"))]
    unpacked = unpack_parameters(params, pack_parameters(params).clone())
    for original, moved in zip(params, unpacked):
        assert moved["host"] is original
        for key, value in original.items():
            if isinstance(value, torch.Tensor):
                assert moved[key].dtype == (torch.bool if value.dtype == torch.bool else torch.float32), key
                assert torch.equal(moved[key], value.to(moved[key].dtype)), key
    assert params[0]["flips"].any() and not params[0]["flips"].all()  # both boolean values round-trip


def test_bg_contrast_draws_half_below_one():
    m = BatchedBrightness(p_brightness=1.0, seed=0).get_parameters(image=torch.empty((20000, 1, 1, 1, 1)))
    m = m["multiplier"]
    assert abs(float((m < 1).double().mean()) - 0.5) < 0.02
    assert float(m.min()) >= 0.75 and float(m.max()) <= 1.25


def test_crop_size_pins_the_margin_of_a_small_excess():
    """Scale 1.05 on a 24³ patch: the corners reach 12.075 voxels from the centre, 0.575 beyond the patch:
    one voxel of margin plus one of slack on each side."""
    assert required_crop_size((24,) * 3, 0.0, False, (1.05, 1.05), 0.0) == (28, 28, 28)
    assert required_crop_size((24,) * 3, 0.0, False, (1.0, 1.0), 0.0) == (24, 24, 24)
    warp = BatchedAffineWarp((24,) * 3, [0.0], 0.0, 0.0, False, 1.0, (1.05, 1.05))
    theta = warp.get_parameters(image=torch.empty((8, 1, *warp.crop_size()), device="meta"))["theta"]
    assert float(F.affine_grid(theta.float(), [8, 1, 2, 2, 2], align_corners=True).abs().amax()) <= 1.0


def test_linear_label_ties_go_to_the_lowest_label():
    labels = torch.full((1, 1, 8, 8, 8), 1, dtype=torch.int16)
    labels[..., :4] = 2
    warp = _warp((6, 6, 6), label_interpolation="linear", seed=0)
    warp.draw_affine = lambda n: (torch.eye(3, dtype=torch.float64).repeat(n, 1, 1),
                                  torch.tensor([[0.0, 0.0, 0.5]] * n, dtype=torch.float64))
    out = warp(image=torch.zeros((1, 1, 8, 8, 8)), segmentation=labels.clone())["segmentation"][0, 0]
    # output z samples input z + 1.5: z=1 -> 2.5 (label 2), z=2 -> 3.5 (a tie of 2 and 1), z=3 -> 4.5 (label 1)
    assert (out[..., 1] == 2).all() and (out[..., 2] == 1).all() and (out[..., 3] == 1).all()


def test_low_resolution_keeps_the_first_axis_of_dummy_2d_plans():
    x = torch.ones((2, 1, 8, 16, 16)) * torch.tensor([1.0, -1.0] * 4).reshape(1, 1, 8, 1, 1)
    parameters = AugmentationParameters.disabled().with_probabilities(p_low_resolution=1.0)
    pipeline = build_device_augmentation(parameters, (8, 16, 16), CT_STATS, in_plane_only=True, seed=0)
    assert pipeline.transforms[7].ignore_axes == (0,)
    out, _ = pipeline(x.clone(), torch.zeros((2, 1, 8, 16, 16), dtype=torch.int16))
    assert torch.equal(out, x)  # constant in-plane: only a change along axis 0 could alter it
    full = build_device_augmentation(parameters, (8, 16, 16), CT_STATS, seed=0)
    assert not torch.equal(full(x.clone(), torch.zeros((2, 1, 8, 16, 16), dtype=torch.int16))[0], x)


@pytest.mark.parametrize("make", [
    lambda: BatchedGaussianNoise(p_noise=0.5, sigma_max=0.5, seed=1),
    lambda: BatchedBrightness(p_brightness=0.5, seed=1),
    lambda: BatchedContrast(p_contrast=0.5, seed=1),
    lambda: BatchedGamma(p_gamma=0.5, seed=1),
    lambda: BatchedGamma(p_gamma=0.5, invert=True, seed=1),
    lambda: BatchedGaussianBlur(p_blur=0.5, p_per_channel=1.0, seed=1),
    lambda: BatchedLowResolution(p_low_resolution=0.5, p_per_channel=1.0, scale=(0.5, 0.6), seed=1),
], ids=["noise", "brightness", "contrast", "gamma", "inverted_gamma", "blur", "low_resolution"])
def test_examples_not_drawn_keep_their_values_exactly(make):
    x = torch.randn((16, 2, 10, 12, 14), generator=torch.Generator().manual_seed(0))
    transform = make()
    params = transform.get_parameters(image=x)
    out = transform.apply({"image": x.clone()}, **params)["image"]
    chosen = params["chosen"]
    assert 0 < int(chosen.sum()) < 16
    assert torch.equal(out[~chosen], x[~chosen]) and not torch.equal(out[chosen], x[chosen])


def _box_of(displacements, crop=(20, 20, 20), patch=(10, 10, 10), matrix=None):
    """The box a warp of translations ``displacements`` (one per example; None: identity) reads, and the warp."""
    warp = _warp(patch, seed=0)
    n = len(displacements)
    d = torch.tensor([v or (0.0, 0.0, 0.0) for v in displacements], dtype=torch.float64)
    m = torch.eye(3, dtype=torch.float64) if matrix is None else matrix
    warp.draw_affine = lambda k: (m.repeat(k, 1, 1), d)
    return warp.get_parameters(image=torch.empty((n, 1, *crop), device="meta"))["box"], warp


def test_the_box_the_warp_reads_is_the_reach_plus_one_voxel_clamped_to_the_crop():
    """Patch 10³ centred in a 20³ crop (offset 5): the corners reach 5 + d and 14 + d per axis; the box is
    [floor(min) - 1, ceil(max) + 1] clamped to [0, 19], over the interpolated examples only."""
    assert _box_of([(0.5, -0.25, 2.3)])[0] == ((4, 3, 6), (13, 13, 13))
    assert _box_of([(-6.5, 5.5, 0.0)])[0] == ((0, 9, 4), (10, 11, 12))  # clamped at 0 and at 19
    # wholly beyond the crop on axis 0: still two voxels (a one-voxel axis would be sampled everywhere)
    assert _box_of([(30.0, 0.0, 0.5)])[0] == ((18, 4, 4), (2, 12, 13))
    assert _box_of([(-30.0, 0.0, 0.5)])[0] == ((0, 4, 4), (2, 12, 13))
    assert _box_of([None, None])[0] == ((0, 0, 0), (20, 20, 20))  # nothing interpolated: the crop
    assert _box_of([None, (0.5, 0.0, 0.0)])[0] == ((4, 4, 4), (13, 12, 12))  # the warped example alone
    scaled = torch.diag(torch.tensor([1.1, 1.0, 0.9], dtype=torch.float64))
    # corners 4.5 ± 4.5 s around the centre, + 5: [4.55, 14.45], [5, 14], [5.45, 13.55]
    assert _box_of([None], matrix=scaled)[0] == ((3, 4, 4), (14, 12, 12))


@pytest.mark.parametrize("displacement", [(0.5, -0.25, 2.3), (-6.5, 5.5, 0.0), (30.0, 0.0, 0.5), (-30.0, 0.0, 0.5)])
def test_a_warp_from_its_box_samples_the_right_voxels(displacement):
    """On an image of its own coordinates the output is x + 5 + d where that lies in the crop, air elsewhere
    (also when the whole patch lies beyond the crop on one axis)."""
    (low, shape), warp = _box_of([displacement])
    image = _coordinates((20, 20, 20), 1)
    result = warp(image=image.clone(), segmentation=torch.full((1, 1, 20, 20, 20), 2, dtype=torch.int16))
    out, labels = result["image"][0], result["segmentation"][0, 0]
    expected = _coordinates((10, 10, 10), 1)[0] + 5 + torch.tensor(displacement).reshape(3, 1, 1, 1)
    inside = ((expected >= 0) & (expected <= 19)).all(0)
    torch.testing.assert_close(out[:, inside], expected[:, inside], atol=1e-4, rtol=0)
    outside = ((expected < -1) | (expected > 20)).any(0)
    assert torch.all(out[:, outside] == AIR) and torch.all(labels[outside] == 0) and torch.all(labels[inside] == 2)


def _nnunet_bg_contrast(value_range, n: int, seed: int = 0) -> torch.Tensor:
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast

    np.random.seed(seed)
    draw = BGContrast(value_range)
    return torch.tensor([draw() for _ in range(n)], dtype=torch.float64)


@pytest.mark.parametrize("value_range", [(0.75, 1.25), (0.7, 1.5), (0.5, 1.0), (1.0, 1.5), (1.2, 1.5)])
def test_the_contrast_split_draws_as_nnunets_bg_contrast(value_range):
    """Below 1 with p 0.5 when the range reaches below 1 (U[low, 1]), else above (U[max(low, 1), high]):
    the distribution of our draws equals BGContrast's (brightness, contrast and gamma share the draw)."""
    n = 20000
    ours = BatchedContrast(p_contrast=1.0, contrast=value_range, seed=0).get_parameters(
        image=torch.empty((n, 1, 1, 1, 1), device="meta"))["factor"][:, 0]
    theirs = _nnunet_bg_contrast(value_range, n)
    for draws in (ours, theirs):
        assert value_range[0] <= float(draws.min()) and float(draws.max()) <= value_range[1]
    assert float((ours < 1).double().mean()) == pytest.approx(float((theirs < 1).double().mean()), abs=0.02)
    assert float((ours == 1).double().mean()) == pytest.approx(float((theirs == 1).double().mean()), abs=0.02)
    quantiles = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    spread = value_range[1] - value_range[0]
    assert float((ours.quantile(quantiles) - theirs.quantile(quantiles)).abs().max()) < 0.03 * spread


def test_a_range_on_one_side_of_one_is_drawn_inside_it_unlike_bg_contrast():
    """A departure: BGContrast draws U[low, 1] or U(1, high) even when the range lies below 1 (numpy's
    uniform(1, high) with high < 1), so half its draws leave the range; ours stay in it, uniformly."""
    n = 20000
    for make, key in ((lambda r: BatchedContrast(1.0, r, seed=0), "factor"),
                      (lambda r: BatchedBrightness(1.0, r, seed=0), "multiplier"),
                      (lambda r: BatchedGamma(1.0, r, seed=0), "gamma")):
        ours = make((0.5, 0.8)).get_parameters(image=torch.empty((n, 1, 1, 1, 1), device="meta"))[key][:, 0]
        assert 0.5 <= float(ours.min()) < 0.51 and 0.79 < float(ours.max()) <= 0.8
        assert float(ours.mean()) == pytest.approx(0.65, abs=0.01)
    theirs = _nnunet_bg_contrast((0.5, 0.8), n)
    assert float((theirs > 0.8).double().mean()) > 0.4


def test_blur_kernels_are_batchgeneratorsv2s_at_its_truncation():
    """Kernel sizes and weights of batchgeneratorsv2's blur, its truncation read from ``blur_dimension``."""
    import inspect

    from batchgeneratorsv2.transforms.noise.gaussian_blur import _build_kernel, _compute_kernel_size, blur_dimension

    from nnunet_ctorg.augmentation.transforms import blur_kernel_size

    truncate = inspect.signature(blur_dimension).parameters["truncate"].default
    sigmas = [0.1, 0.25, 0.4, 0.5, 0.55, 0.6, 0.75, 0.8, 0.9, 1.0, 1.25, 2.0, 2.4]
    for s in sigmas:
        assert blur_kernel_size(s) == _compute_kernel_size(s, truncate=truncate), s
    kernels = gaussian_kernels(torch.tensor(sigmas, dtype=torch.float64), 8)
    for s, kernel in zip(sigmas, kernels):
        theirs = _build_kernel(s, truncate=truncate)
        half = len(theirs) // 2
        torch.testing.assert_close(kernel[8 - half:8 + half + 1], theirs.float(), atol=1e-7, rtol=0)
        assert torch.equal(kernel[:8 - half], torch.zeros(8 - half)) and float(kernel.sum()) == pytest.approx(1.0)
    assert BatchedGaussianBlur().radius == blur_kernel_size(1.0) // 2 == 3  # the largest kernel of (0.5, 1)
    assert BatchedGaussianBlur(blur_sigma=(0.0, 0.0)).radius == 0
    with pytest.raises(ValueError, match="radius"):
        gaussian_kernels(torch.tensor([2.0], dtype=torch.float64), 3)


def test_every_constructor_default_is_nnunets_or_the_parameters():
    """Each transform built with its required arguments only has nnU-Net's values (read from its transforms for a
    3-D plan), or where nnU-Net has none the ``AugmentationParameters`` default; departures are named."""
    from tests.augmentation.nnunet_reference import ISOTROPIC_PATCH, nnunet_plan, nnunet_values

    ref, p = nnunet_values(nnunet_plan(ISOTROPIC_PATCH)), AugmentationParameters()
    warp = BatchedAffineWarp((8, 8, 8), [0.0])
    assert (warp.p_rotation, warp.p_scaling, warp.scaling) == (ref["p_rotation"], ref["p_scaling"], ref["scaling"])
    assert warp.rotation == pytest.approx(ref["rotation"]) and warp.in_plane_only == ref["in_plane_only"]
    assert warp.p_mirror == pytest.approx(ref["p_mirror"], abs=0.02) and warp.spacing is None
    assert (warp.p_shear, warp.shear, warp.affine_noise, warp.p_reflection, warp.displacement) == (
        p.p_shear, p.shear, p.affine_noise, p.p_reflection, p.displacement_vox)
    # departures: no mirroring unless axes are given; the paper's nearest labels (the pipeline passes "linear")
    assert warp.mirror_axes == () and warp.label_interpolation == "nearest" != ref["label_interpolation"]
    occlusion = BatchedSlabOcclusion(0, [0.0])
    assert (occlusion.p_occlusion, occlusion.max_fraction, occlusion.background) == (
        p.p_occlusion, p.occlusion_max_fraction, 0)
    noise = BatchedGaussianNoise()
    assert (noise.p_noise, noise.sigma_max) == (ref["p_noise"], ref["noise_sigma_max"])
    window = BatchedHUWindow([None])
    assert (window.p_window, window.lower_hu, window.upper_hu) == (p.p_window, p.window_lower_hu, p.window_upper_hu)
    blur = BatchedGaussianBlur()
    assert (blur.p_blur, blur.blur_sigma, blur.p_per_channel) == (ref["p_blur"], ref["blur_sigma"],
                                                                   ref["blur.p_per_channel"])
    brightness, contrast = BatchedBrightness(), BatchedContrast()
    assert (brightness.p_brightness, brightness.brightness) == (ref["p_brightness"], ref["brightness"])
    assert (contrast.p_contrast, contrast.contrast) == (ref["p_contrast"], ref["contrast"])
    low_res = BatchedLowResolution()
    assert (low_res.p_low_resolution, low_res.scale, low_res.p_per_channel, low_res.ignore_axes) == (
        ref["p_low_resolution"], ref["low_resolution_scale"], ref["low_resolution.p_per_channel"],
        ref["low_resolution.ignore_axes"])
    gamma = BatchedGamma()
    assert (gamma.p_gamma, gamma.gamma, gamma.invert) == (ref["p_gamma"], ref["gamma"], False)
    assert BatchedGamma(invert=True).p_gamma == ref["p_gamma"]  # the inverted one's 0.1 is passed by the pipeline


def test_rotation_matrices_follow_the_documented_axes_and_order():
    """Angle k rotates the plane of the other two axes (the lower one towards the higher one: R[a, b] = -sin);
    the product is R0 @ R1 @ R2."""
    a = 0.3
    c, s = math.cos(a), math.sin(a)
    r0, r1, r2 = rotation_matrices(torch.tensor([[a, 0, 0], [0, a, 0], [0, 0, a]], dtype=torch.float64))
    expected = [torch.tensor(m, dtype=torch.float64) for m in ([[1, 0, 0], [0, c, -s], [0, s, c]],
                                                               [[c, 0, -s], [0, 1, 0], [s, 0, c]],
                                                               [[c, -s, 0], [s, c, 0], [0, 0, 1]])]
    for got, want in zip((r0, r1, r2), expected):
        torch.testing.assert_close(got, want)
    angles = torch.tensor([[0.3, -0.5, 0.9]], dtype=torch.float64)
    single = [rotation_matrices(torch.diag(angles[0])[k:k + 1]) for k in range(3)]
    torch.testing.assert_close(rotation_matrices(angles), single[0] @ single[1] @ single[2])


def test_required_crop_size_pins_each_term_of_the_bound():
    """Regression pins, one term at a time (rotation, in-plane, shear, noise, displacement, spacing)."""
    def crop(patch, rotation_deg, in_plane, scaling=(1.0, 1.0), shear=0.0, **kwargs):
        return required_crop_size(patch, math.radians(rotation_deg), in_plane, scaling, shear, **kwargs)

    assert crop((24,) * 3, 30, False) == (42, 44, 42)
    assert crop((24,) * 3, 30, True) == (24, 36, 36)
    assert crop((8, 24, 24), 180, True, (1.0, 1.2), 0.1) == (8, 46, 46)
    assert crop((24,) * 3, 0, False, shear=0.1) == (32, 32, 32)
    assert crop((24,) * 3, 0, False, affine_noise=0.02) == (28, 28, 28)
    assert crop((24,) * 3, 0, False, displacement=2.5) == (32, 32, 32)
    assert crop((12, 24, 24), 15, False, shear=0.1) == (32, 40, 40)
    assert crop((12, 24, 24), 15, False, shear=0.1, spacing=(3.0, 1.0, 1.0)) == (20, 50, 48)
    # dummy 2-D: axis 0 is neither rotated nor scaled, only the displacement grows it (3 -> 4 voxels a side)
    assert crop((16, 192, 160), 15, True, (0.7, 1.4), displacement=3.0) == (24, 326, 294)


@pytest.mark.parametrize("make, match", [
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], p_rotation=-0.1), "p_rotation"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], p_mirror=1.1), "p_mirror"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], scaling=(0.0, 1.0)), "scaling"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], scaling=(1.2, 1.1)), "scaling"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], scaling=(1.0, 1.1, 1.2)), "scaling"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], rotation=-0.1), "rotation"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], displacement=-1.0), "displacement"),
    (lambda: BatchedAffineWarp((8, 8, 1), [0.0]), "patch_size"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], mirror_axes=(3,)), "mirror_axes"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], spacing=(1.0, 1.0)), "spacing"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], spacing=(1.0, 0.0, 1.0)), "spacing"),
    (lambda: BatchedAffineWarp((8, 8, 8), [0.0], label_interpolation="cubic"), "label_interpolation"),
    (lambda: BatchedSlabOcclusion(0, [0.0], p_occlusion=1.5), "p_occlusion"),
    (lambda: BatchedSlabOcclusion(0, [0.0], max_fraction=1.01), "max_fraction"),
    (lambda: BatchedSlabOcclusion(-1, [0.0]), "axis"),
    (lambda: BatchedGaussianNoise(p_noise=-0.5), "p_noise"),
    (lambda: BatchedGaussianNoise(sigma_max=-0.1), "sigma_max"),
    (lambda: BatchedHUWindow([None], p_window=2.0), "p_window"),
    (lambda: BatchedHUWindow([None], lower_hu=(-100.0, -200.0)), "lower_hu"),
    (lambda: BatchedHUWindow([None], upper_hu=(300.0, 200.0)), "upper_hu"),
    (lambda: BatchedHUWindow([None], lower_hu=(-100.0, 250.0)), "overlap"),
    (lambda: BatchedHUWindow([(40.0, 0.0)]), "std"),
    (lambda: BatchedGaussianBlur(p_blur=1.5), "p_blur"),
    (lambda: BatchedGaussianBlur(p_per_channel=1.5), "p_per_channel"),
    (lambda: BatchedGaussianBlur(blur_sigma=(-0.5, 1.0)), "blur_sigma"),
    (lambda: BatchedBrightness(p_brightness=1.5), "p_brightness"),
    (lambda: BatchedBrightness(brightness=(-0.5, 1.0)), "brightness"),
    (lambda: BatchedContrast(p_contrast=1.5), "p_contrast"),
    (lambda: BatchedContrast(contrast=(-0.5, 1.0)), "contrast"),
    (lambda: BatchedLowResolution(p_low_resolution=1.5), "p_low_resolution"),
    (lambda: BatchedLowResolution(p_per_channel=-0.5), "p_per_channel"),
    (lambda: BatchedLowResolution(scale=(0.0, 1.0)), "scale"),
    (lambda: BatchedGamma(p_gamma=1.5), "p_gamma"),
    (lambda: BatchedGamma(gamma=(0.0, 1.5)), "gamma"),
])
def test_each_transform_refuses_arguments_past_their_bounds(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_each_transform_accepts_arguments_on_their_bounds():
    BatchedAffineWarp((2, 2, 2), [0.0], p_rotation=0.0, rotation=0.0, p_scaling=1.0, scaling=(1e-6, 1e-6),
                      shear=0.0, affine_noise=0.0, displacement=0.0, mirror_axes=(0, 1, 2), p_mirror=1.0,
                      spacing=(1.0, 1.0, 1.0), label_interpolation="linear")
    BatchedSlabOcclusion(2, [0.0], p_occlusion=0.0, max_fraction=1.0)
    BatchedSlabOcclusion(0, [0.0], p_occlusion=1.0, max_fraction=0.0)
    BatchedGaussianNoise(p_noise=1.0, sigma_max=0.0)
    BatchedHUWindow([(0.0, 1e-3), None], p_window=0.0, lower_hu=(-100.0, -100.0), upper_hu=(-99.0, -99.0))
    BatchedGaussianBlur(p_blur=0.0, blur_sigma=(0.0, 0.0), p_per_channel=0.0)
    BatchedBrightness(p_brightness=1.0, brightness=(0.0, 0.0))
    BatchedContrast(p_contrast=0.0, contrast=(0.0, 2.0))
    BatchedLowResolution(p_low_resolution=0.0, scale=(1e-6, 1e-6), p_per_channel=1.0)
    BatchedGamma(p_gamma=1.0, gamma=(1e-6, 1e-6))


def test_low_resolution_keeps_at_least_one_voxel_per_axis():
    """A scale that rounds a side to 0 voxels keeps 1: the example becomes constant, nothing fails."""
    x = torch.randn((1, 1, 8, 8, 8), generator=torch.Generator().manual_seed(0))
    t = BatchedLowResolution(p_low_resolution=1.0, scale=(0.01, 0.01), p_per_channel=1.0, seed=0)
    out = t.apply({"image": x.clone()}, **t.get_parameters(image=x))["image"]
    assert torch.allclose(out, out.flatten()[0].expand_as(out)) and not torch.allclose(x, x.flatten()[0].expand_as(x))


def test_nearest_labels_are_the_voxel_the_rotated_point_rounds_to():
    """Labels that encode their voxel (z·400 + y·20 + x) under a rotation and scaling: each output label is the
    input voxel nearest to the point the (trilinear, hence exact) coordinate image says was sampled."""
    (_, _), warp = _box_of([(0.3, -0.2, 0.1)], matrix=rotation_matrices(
        torch.tensor([[0.3, -0.2, 0.25]], dtype=torch.float64))[0] * 1.08)
    image = _coordinates((20, 20, 20), 1)
    voxel = (image[:, 0] * 400 + image[:, 1] * 20 + image[:, 2]).to(torch.int16)[:, None]
    result = warp(image=image.clone(), segmentation=voxel.clone())
    sampled, labels = result["image"][0].double(), result["segmentation"][0, 0].long()
    decoded = torch.stack([labels // 400, labels // 20 % 20, labels % 20])
    clear = ((sampled - sampled.round()).abs() < 0.45).all(0) & ((sampled >= 0) & (sampled <= 19)).all(0)
    assert clear.sum() > 500  # most of the patch: rotated points off the voxel centres
    assert torch.equal(decoded[:, clear], sampled.round().long()[:, clear])


def test_the_label_vote_is_the_largest_summed_weight_lowest_label_on_ties():
    rng = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 4, (500,), generator=rng, dtype=torch.int16) for _ in range(8)]
    weights = [torch.rand(500, generator=rng, dtype=torch.float64) for _ in range(8)]
    weights[3][:50] = weights[5][:50] = 0.0  # some ties
    totals = torch.zeros((4, 500), dtype=torch.float64)
    for label, weight in zip(labels, weights):
        totals.scatter_add_(0, label.long()[None], weight[None])
    present = torch.zeros((4, 500), dtype=torch.bool)
    for label in labels:
        present.scatter_(0, label.long()[None], True)
    expected = torch.where(present, totals, -1.0).argmax(0)  # argmax: the first (lowest) label of the largest
    assert torch.equal(BatchedAffineWarp._vote(labels, weights, torch.int16).long(), expected)


def test_blur_with_a_one_voxel_kernel_radius_equals_nnunets(real_ct_dir):
    from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform

    x = _real_ct_patch(real_ct_dir)
    t = BatchedGaussianBlur(p_blur=1.0, blur_sigma=(0.35, 0.45), p_per_channel=1.0, seed=0)
    assert t.radius == 1  # kernels of 3 voxels
    t._uniform = lambda low, high, size: torch.full(tuple(size), 0.4, dtype=torch.float64)
    ours = t.apply({"image": x.clone()}, **t.get_parameters(image=x))["image"]
    theirs = _batch_of(GaussianBlurTransform(lambda shape, dim: 0.4, synchronize_channels=False,
                                             synchronize_axes=False, p_per_channel=1), x)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    assert float((theirs - x).abs().max()) > 0.01


def test_shear_is_drawn_on_both_sides_of_zero_off_the_diagonal():
    warp = _warp((8, 8, 8), p_shear=1.0, shear=0.2, seed=0)
    matrix, _ = warp.draw_affine(4000)
    off = matrix[:, ~torch.eye(3, dtype=torch.bool)]
    assert torch.equal(torch.diagonal(matrix, dim1=1, dim2=2), torch.ones(4000, 3, dtype=torch.float64))
    assert off.abs().max() <= 0.2 and off.min() < -0.19 and off.max() > 0.19 and abs(float(off.mean())) < 0.01


def test_linear_labels_count_neighbours_outside_the_volume_as_their_own_label():
    """At output (0, 3, x) the warp reads input (-0.3, 3.6, x): 0.3 of the weight lies outside the volume,
    0.28 on background (y 3) and 0.42 on organ 3 (y 4). The organ wins; were the outside counted as
    background (0.58), it would lose."""
    labels = torch.zeros((1, 1, 8, 8, 8), dtype=torch.int16)
    labels[:, :, :, 4:] = 3
    warp = _warp((8, 8, 8), label_interpolation="linear", seed=0)
    warp.draw_affine = lambda n: (torch.eye(3, dtype=torch.float64).repeat(n, 1, 1),
                                  torch.tensor([[-0.3, 0.6, 0.0]] * n, dtype=torch.float64))
    out = warp(image=torch.zeros((1, 1, 8, 8, 8)), segmentation=labels.clone())["segmentation"][0, 0]
    assert (out[0, 3] == 3).all() and (out[0, 2] == 0).all() and (out[1, 3] == 3).all()


def test_occlusion_along_the_second_axis_hides_whole_slices_start_and_end_included():
    occlusion = BatchedSlabOcclusion(axis=1, image_fill=[AIR], p_occlusion=1.0, max_fraction=0.5, seed=0)
    image, labels = torch.ones((2, 1, 4, 20, 6)), torch.full((2, 1, 4, 20, 6), 2, dtype=torch.int16)
    draw = occlusion._uniform
    occlusion._uniform = lambda low, high, size: torch.full((size,), 2.0 if low == 0.0 else 3.0, dtype=torch.float64)
    params = occlusion.get_parameters(image=image)  # z = 3, δ = 2: slices 3, 4 and 5
    occlusion._uniform = draw
    out = occlusion.apply({"image": image.clone(), "segmentation": labels.clone()}, **params)
    hidden = torch.zeros(20, dtype=torch.bool)
    hidden[3:6] = True
    assert torch.all(out["image"][:, :, :, hidden] == AIR) and torch.all(out["image"][:, :, :, ~hidden] == 1)
    labels_out = out["segmentation"]
    assert torch.all(labels_out[:, :, :, hidden] == 0) and torch.all(labels_out[:, :, :, ~hidden] == 2)
    # the drawn slab: z ~ U[-δmax, L], δ ~ U[0, δmax] along axis 1 (L 20, δmax 10), ends included
    drawn = occlusion.get_parameters(image=torch.zeros((20000, 1, 4, 20, 6)))
    start, delta = drawn["start"], drawn["delta"]
    assert -10 <= float(start.min()) < -9.9 and 19.9 < float(start.max()) <= 20
    assert float(delta.min()) < 0.01 and 9.99 < float(delta.max()) <= 10
    assert 0.04 < float((delta < 0.5).double().mean()) < 0.06


def test_blur_runs_when_every_example_blurs_only_some_channels():
    x = torch.randn((1, 2, 10, 10, 10), generator=torch.Generator().manual_seed(0))
    for seed in range(100):  # a draw with channel 0 blurred and channel 1 not
        t = BatchedGaussianBlur(p_blur=1.0, p_per_channel=0.5, seed=seed)
        params = t.get_parameters(image=x)
        if (params["sigma"][0, 0] > 0).all() and (params["sigma"][0, 1] == 0).all():
            break
    else:
        raise AssertionError("no seed below 100 draws one channel of two")
    out = t.apply({"image": x.clone()}, **params)["image"]
    assert torch.equal(out[:, 1], x[:, 1]) and float((out[:, 0] - x[:, 0]).abs().max()) > 0.1


@pytest.mark.parametrize("angles, scale", [((2.97, 0.0, 0.0), 1.25), ((0.5, -0.4, 0.6), 0.8), ((0.0, 3.1, 0.0), 1.0)])
def test_a_rotated_and_scaled_warp_from_its_box_samples_the_right_points(angles, scale):
    """On an image of its own coordinates the output is A (x - c) + c + 5 (c the patch centre, 5 the offset of a
    10³ patch in a 20³ crop) wherever that lies inside the crop, for large rotations too (the box the warp
    reads must hold every point, or its edge voxels would be sampled instead)."""
    matrix = rotation_matrices(torch.tensor([angles], dtype=torch.float64))[0] * scale
    (_, _), warp = _box_of([(0.0, 0.0, 0.0)], matrix=matrix)
    result = warp(image=_coordinates((20, 20, 20), 1), segmentation=torch.zeros((1, 1, 20, 20, 20), dtype=torch.int16))
    x = _coordinates((10, 10, 10), 1)[0].double().reshape(3, -1)
    expected = (matrix @ (x - 4.5) + 4.5 + 5).reshape(3, 10, 10, 10)
    inside = ((expected >= 0) & (expected <= 19)).all(0)
    assert inside.sum() > 300
    torch.testing.assert_close(result["image"][0].double()[:, inside], expected[:, inside], atol=1e-3, rtol=0)
