"""The batched device transforms: geometry, labels, each paper operation, nnU-Net equivalence, seeds, CUDA."""

import json
import math

import numpy as np
import pytest
import torch

from nnunet_ctorg.augmentation import AugmentationParameters, build_device_augmentation
from nnunet_ctorg.augmentation.transforms import (
    BatchedAffineWarp,
    BatchedBrightness,
    BatchedContrast,
    BatchedGamma,
    BatchedGaussianBlur,
    BatchedGaussianNoise,
    BatchedHUWindow,
    BatchedLowResolution,
    BatchedMirror,
    BatchedSlabOcclusion,
    BatchedTrainingTargets,
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


def test_outside_the_volume_is_air_and_background_or_ignore():
    warp = _warp((8, 8, 8), seed=0)
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
    ignore = BatchedAffineWarp((8, 8, 8), [AIR], seg_outside=9, p_rotation=0, p_scaling=0, p_shear=0)
    ignore.draw_affine = warp.draw_affine
    assert set(ignore(image=image.clone(), segmentation=labels.clone())["segmentation"].unique().tolist()) == {3, 9}


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


def test_noise_sigma_is_drawn_per_example():
    noise = BatchedGaussianNoise(p_noise=1.0, sigma_max=2.0, seed=1)
    image = torch.zeros((4, 1, 40, 40, 40))
    params = noise.get_parameters(image=image)
    out = noise.apply({"image": image.clone()}, **params)["image"]
    stds = out.flatten(1).std(1).double()
    assert torch.allclose(stds, params["sigma"], rtol=0.02)
    assert float(params["sigma"].max() - params["sigma"].min()) > 0.2


def test_intensity_transforms_match_their_definitions():
    rng = torch.Generator().manual_seed(0)
    image = torch.randn((3, 2, 16, 16, 16), generator=rng) + 1.0
    brightness = BatchedBrightness(p_brightness=1.0, seed=1)
    p = brightness.get_parameters(image=image)
    out = brightness.apply({"image": image.clone()}, **p)["image"]
    assert torch.allclose(out, image * p["multiplier"].float()[..., None, None, None])
    assert ((p["multiplier"] >= 0.75) & (p["multiplier"] <= 1.25)).all()

    contrast = BatchedContrast(p_contrast=1.0, seed=2)
    out = contrast.apply({"image": image.clone()}, **contrast.get_parameters(image=image))["image"]
    assert torch.all(out.flatten(2).amin(2) >= image.flatten(2).amin(2) - 1e-6)
    assert torch.all(out.flatten(2).amax(2) <= image.flatten(2).amax(2) + 1e-6)

    for invert in (False, True):
        gamma = BatchedGamma(p_gamma=1.0, invert=invert, seed=3)
        out = gamma.apply({"image": image.clone()}, **gamma.get_parameters(image=image))["image"]
        assert torch.allclose(out.flatten(2).mean(2), image.flatten(2).mean(2), atol=1e-4)
        assert torch.allclose(out.flatten(2).std(2), image.flatten(2).std(2), atol=1e-4)
        assert not torch.allclose(out, image, atol=1e-3)

    blur = BatchedGaussianBlur(p_blur=1.0, p_per_channel=1.0, seed=4)
    spike = torch.zeros((1, 1, 15, 15, 15))
    spike[0, 0, 7, 7, 7] = 1.0
    out = blur.apply({"image": spike.clone()}, **blur.get_parameters(image=spike))["image"]
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5) and 0 < float(out.max()) < 0.2
    assert torch.allclose(out, out.flip(2).flip(3).flip(4), atol=1e-7)  # symmetric kernels
    no_channel = BatchedGaussianBlur(p_blur=1.0, p_per_channel=0.0, seed=4)
    assert torch.equal(no_channel.apply({"image": spike.clone()}, **no_channel.get_parameters(image=spike))["image"],
                       spike)

    low_res = BatchedLowResolution(p_low_resolution=1.0, scale=(0.5, 0.5), p_per_channel=1.0, seed=5)
    out = low_res.apply({"image": image.clone()}, **low_res.get_parameters(image=image))["image"]
    assert out.shape == image.shape and not torch.allclose(out, image)


def test_mirror_flips_image_and_labels_together():
    mirror = BatchedMirror(axes=(0, 2), p_mirror=0.5, seed=0)
    image = torch.randn((8, 1, 4, 5, 6))
    labels = (image > 0).to(torch.int16)
    params = mirror.get_parameters(image=image)
    out = mirror.apply({"image": image.clone(), "segmentation": labels.clone()}, **params)
    for b in range(8):
        expected = image[b]
        for axis, chosen in params["flips"].items():
            if chosen[b]:
                expected = expected.flip(1 + axis)
        assert torch.equal(out["image"][b], expected)
    assert torch.equal(out["segmentation"], (out["image"] > 0).to(torch.int16))


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
                                      seed=seed)(image.clone(), labels.clone()) for seed in (7, 7, 8)]
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


@CUDA
def test_cpu_and_cuda_give_the_same_batch():
    params = AugmentationParameters(p_noise=0.0).with_probabilities(
        p_rotation=1.0, p_scaling=1.0, p_shear=1.0, p_occlusion=1.0, p_window=1.0, p_blur=1.0, p_brightness=1.0,
        p_contrast=1.0, p_gamma=1.0, p_low_resolution=1.0)
    rng = torch.Generator().manual_seed(0)
    image = torch.randn((2, 1, 48, 48, 48), generator=rng)
    labels = torch.randint(0, 6, (2, 1, 48, 48, 48), generator=rng, dtype=torch.int16)
    outputs = []
    for device in ("cpu", "cuda"):
        pipeline = build_device_augmentation(params, (32, 32, 32), CT_STATS, deep_supervision_scales=[[1, 1, 1]],
                                             seed=21)
        out, target = pipeline(image.to(device), labels.to(device))
        outputs.append((out.cpu(), target[0].cpu()))
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-3)
    assert (outputs[0][1] != outputs[1][1]).double().mean() < 1e-3  # nearest ties may round differently


@CUDA
def test_cuda_batch_stays_on_the_device():
    pipeline = build_device_augmentation(AugmentationParameters(), (16, 16, 16), CT_STATS,
                                         deep_supervision_scales=[[1, 1, 1], [0.5] * 3], seed=0)
    out, target = pipeline(torch.randn((2, 1, 24, 24, 24), device="cuda"),
                           torch.zeros((2, 1, 24, 24, 24), dtype=torch.int16, device="cuda"))
    assert out.is_cuda and all(t.is_cuda for t in target)
