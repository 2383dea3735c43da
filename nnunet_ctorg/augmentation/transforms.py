"""Batched augmentation transforms that run on the device the batch is on (paper 003 §IV).

They follow batchgeneratorsv2's ``BasicTransform`` (``get_parameters`` / ``apply``) but take a whole
batch: ``image`` (B, C, X, Y, Z) float and ``segmentation`` (B, 1, X, Y, Z) integer. Random
parameters are drawn on the CPU from each transform's own seeded generator, so a seed fixes the
parameters whatever the device; per-voxel noise is drawn on the batch's device from a generator
seeded by the same source. Only the examples an operation is drawn for are touched.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform, SegOnlyTransform


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_range(name: str, value: Sequence[float], minimum: float | None = None) -> None:
    if len(value) != 2 or value[0] > value[1] or (minimum is not None and value[0] < minimum):
        bound = "-inf" if minimum is None else minimum
        raise ValueError(f"{name} must be (low, high) with {bound} <= low <= high, got {value!r}")


def _chosen_index(chosen: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Indices of the examples an operation was drawn for, on ``like``'s device."""
    return chosen.nonzero()[:, 0].to(like.device)


def _channel_view(values: Sequence[float], image: torch.Tensor) -> torch.Tensor:
    """Per-channel constants shaped (1, C, 1, ...) on the image's device."""
    shape = (1, len(values)) + (1,) * (image.ndim - 2)
    return torch.as_tensor(values, dtype=image.dtype, device=image.device).reshape(shape)


class BatchedRandomTransform(BasicTransform):
    """Base: a seeded CPU generator for parameters and a lazily made one per device for noise."""

    def __init__(self, seed: int | None = None):
        super().__init__()
        self.generator = torch.Generator()
        self._device_generators: dict[str, torch.Generator] = {}
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the random stream (``None``: from fresh entropy)."""
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self._device_generators = {}

    def _uniform(self, low: float, high: float, size: Sequence[int] | int) -> torch.Tensor:
        size = (size,) if isinstance(size, int) else tuple(size)
        return low + (high - low) * torch.rand(size, generator=self.generator, dtype=torch.float64)

    def _chosen(self, p: float, n: int) -> torch.Tensor:
        """Which of n examples receive an operation of probability p (bool, CPU)."""
        return torch.rand(n, generator=self.generator, dtype=torch.float64) < p

    def _bg_contrast(self, value_range: Sequence[float], size: Sequence[int]) -> torch.Tensor:
        """batchgeneratorsv2's ``BGContrast`` draw: half below 1, half above 1 (when the range spans 1)."""
        low, high = value_range
        below = self._uniform(low, min(high, 1.0), size)
        above = self._uniform(max(low, 1.0), high, size)
        pick_below = (torch.rand(tuple(size), generator=self.generator, dtype=torch.float64) < 0.5) & (low < 1.0)
        return torch.where(pick_below, below, above)

    def _device_generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._device_generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
            self._device_generators[key] = generator
        return self._device_generators[key]


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians about array axes 0, 1, 2 -> (B, 3, 3) rotation R0 @ R1 @ R2."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def rot(i: int, a: int, b: int) -> torch.Tensor:
        m = torch.stack([one, zero, zero, zero, one, zero, zero, zero, one], -1).reshape(-1, 3, 3).clone()
        m[:, a, a], m[:, a, b], m[:, b, a], m[:, b, b] = c[:, i], -s[:, i], s[:, i], c[:, i]
        return m

    return rot(0, 1, 2) @ rot(1, 0, 2) @ rot(2, 0, 1)


class BatchedAffineWarp(BatchedRandomTransform):
    """Random affine warp and crop to the patch, all warped examples in one ``grid_sample`` call.

    Output voxel x (patch coordinates) samples the input at ``A (x - c_out) + c_out + o + d``, o the
    integer offset that centres the patch in the (larger) input crop; for equal shapes this is the
    paper's x' = A x + b with b = c + d - A c. Image trilinear, labels nearest (no one-hot); what lies
    outside the input (and the loader's padding, marked -1 in the labels) becomes ``image_fill``
    (per channel, air) and the label ``seg_outside``. Examples drawn with A = I and d = 0 are cropped
    without interpolation.
    """

    def __init__(self, patch_size: Sequence[int], image_fill: Sequence[float], seg_outside: int = 0,
                 p_rotation: float = 0.2, rotation: float = math.radians(30), in_plane_only: bool = False,
                 p_scaling: float = 0.2, scaling: Sequence[float] = (0.7, 1.4), p_shear: float = 0.2,
                 shear: float = 0.1, affine_noise: float = 0.0, p_reflection: float = 0.0,
                 displacement: float = 0.0, seed: int | None = None):
        super().__init__(seed)
        if len(patch_size) != 3 or min(patch_size) < 2:
            raise ValueError(f"patch_size must be three sizes >= 2, got {patch_size!r}")
        for name, p in (("p_rotation", p_rotation), ("p_scaling", p_scaling), ("p_shear", p_shear),
                        ("p_reflection", p_reflection)):
            _check_probability(name, p)
        _check_range("scaling", scaling, minimum=1e-6)
        for name, value in (("rotation", rotation), ("shear", shear), ("affine_noise", affine_noise),
                            ("displacement", displacement)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        self.patch_size = tuple(int(s) for s in patch_size)
        self.image_fill = tuple(float(v) for v in image_fill)
        self.seg_outside = int(seg_outside)
        self.p_rotation, self.rotation, self.in_plane_only = p_rotation, rotation, in_plane_only
        self.p_scaling, self.scaling = p_scaling, tuple(scaling)
        self.p_shear, self.shear, self.affine_noise = p_shear, shear, affine_noise
        self.p_reflection, self.displacement = p_reflection, displacement

    def draw_affine(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n matrices A (n, 3, 3) and displacements d (n, 3) in voxels, float64 on the CPU."""
        free = torch.tensor([not self.in_plane_only, True, True])  # axes that may rotate/scale/shear
        angles = self._uniform(-self.rotation, self.rotation, (n, 3))
        angles[:, 1:] *= ~torch.tensor(self.in_plane_only)  # dummy 2-D: rotate about axis 0 only
        angles *= self._chosen(self.p_rotation, n)[:, None]
        scale = self._uniform(*self.scaling, n)
        scale = torch.where(self._chosen(self.p_scaling, n), scale, torch.ones_like(scale))
        scaling = torch.diag_embed(torch.where(free, scale[:, None], torch.ones(n, 3, dtype=torch.float64)))
        shearing = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        off_diagonal = ~torch.eye(3, dtype=torch.bool) & free[:, None] & free[None, :]
        shear_values = self._uniform(-self.shear, self.shear, (n, 3, 3)) * self._chosen(self.p_shear, n)[:, None, None]
        shearing = shearing + shear_values * off_diagonal
        reflect = torch.rand((n, 3), generator=self.generator, dtype=torch.float64) < self.p_reflection
        reflection = torch.diag_embed(torch.where(reflect, -1.0, 1.0).to(torch.float64))
        noise = self._uniform(-self.affine_noise, self.affine_noise, (n, 3, 3))
        matrix = rotation_matrices(angles) @ shearing @ scaling @ reflection + noise
        displacement = self._uniform(-self.displacement, self.displacement, (n, 3))
        return matrix, displacement

    def get_parameters(self, **data_dict) -> dict:
        image = data_dict["image"]
        if image.ndim != 5:
            raise ValueError(f"expected a batch (B, C, X, Y, Z), got shape {tuple(image.shape)}")
        input_shape = tuple(image.shape[2:])
        if any(i < p for i, p in zip(input_shape, self.patch_size)):
            raise ValueError(f"input crop {input_shape} is smaller than the patch {self.patch_size}")
        matrix, displacement = self.draw_affine(image.shape[0])
        identity = torch.eye(3, dtype=torch.float64)
        warped = ~((matrix == identity).all(dim=(1, 2)) & (displacement == 0).all(dim=1))
        offset = [(i - p) // 2 for i, p in zip(input_shape, self.patch_size)]
        grid = None
        if warped.any():
            d_in = torch.diag(torch.tensor([(s - 1) / 2 for s in input_shape], dtype=torch.float64))
            d_out = torch.diag(torch.tensor([(s - 1) / 2 for s in self.patch_size], dtype=torch.float64))
            shift = torch.tensor([(p - 1) / 2 + o - (i - 1) / 2
                                  for i, p, o in zip(input_shape, self.patch_size, offset)], dtype=torch.float64)
            d_in_inv = torch.linalg.inv(d_in)
            linear = d_in_inv @ matrix[warped] @ d_out
            translation = (d_in_inv @ (shift + displacement[warped])[..., None])[..., 0]
            flip = torch.flip(torch.eye(3, dtype=torch.float64), (0,))  # grid_sample wants (z, y, x) -> (x, y, z)
            theta = torch.cat([flip @ linear @ flip, (flip @ translation[..., None])], dim=2)
            theta = theta.to(device=image.device, dtype=torch.float32)
            grid = F.affine_grid(theta, [int(warped.sum()), 1, *self.patch_size], align_corners=True)
        return {"warped": warped, "offset": offset, "grid": grid, "matrix": matrix, "displacement": displacement}

    def apply(self, data_dict: dict, **params) -> dict:
        image, seg = data_dict["image"], data_dict.get("segmentation")
        fill = _channel_view(self.image_fill, image)
        if seg is not None:
            image = torch.where(seg[:, :1] < 0, fill, image)  # the loader's padding lies outside the volume
        warped = params["warped"].to(image.device)
        crop = (slice(None), slice(None)) + tuple(slice(o, o + p) for o, p in zip(params["offset"], self.patch_size))
        out_image = image[crop].clone()
        out_seg = seg[crop].clone() if seg is not None else None
        if params["grid"] is not None:
            grid = params["grid"]
            out_image[warped] = F.grid_sample(image[warped] - fill, grid, mode="bilinear", padding_mode="zeros",
                                              align_corners=True) + fill
            if seg is not None:
                shifted = (seg[warped] + 1).to(torch.float32)  # 0 = outside after zero padding
                sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)
                out_seg[warped] = (sampled.round() - 1).to(seg.dtype)
        if out_seg is not None:
            out_seg = torch.where(out_seg < 0, torch.as_tensor(self.seg_outside, dtype=out_seg.dtype,
                                                               device=out_seg.device), out_seg)
        data_dict["image"] = out_image
        if out_seg is not None:
            data_dict["segmentation"] = out_seg
        return data_dict


class BatchedSlabOcclusion(BatchedRandomTransform):
    """Paper eq. 2: slices z <= x_axis <= z + δ set to ``image_fill``, their labels to background.

    δ ~ U[0, δmax], z ~ U[-δmax, L] (L the patch length along ``axis``), so every slice is equally
    likely to be hidden; δmax = ``max_fraction`` x L.
    """

    def __init__(self, axis: int, image_fill: Sequence[float], p_occlusion: float = 0.2,
                 max_fraction: float = 0.33, background: int = 0, seed: int | None = None):
        super().__init__(seed)
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be a spatial axis 0, 1 or 2, got {axis!r}")
        _check_probability("p_occlusion", p_occlusion)
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction!r}")
        self.axis, self.image_fill, self.background = axis, tuple(float(v) for v in image_fill), int(background)
        self.p_occlusion, self.max_fraction = p_occlusion, max_fraction

    def get_parameters(self, **data_dict) -> dict:
        image = data_dict["image"]
        n, length = image.shape[0], image.shape[2 + self.axis]
        delta_max = self.max_fraction * length
        delta = self._uniform(0.0, delta_max, n)
        start = self._uniform(-delta_max, length, n)
        chosen = self._chosen(self.p_occlusion, n)
        index = torch.arange(length, dtype=torch.float64)
        mask = chosen[:, None] & (index >= start[:, None]) & (index <= (start + delta)[:, None])
        return {"mask": mask, "start": start, "delta": delta, "chosen": chosen}

    def _broadcast_mask(self, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        shape = [mask.shape[0], 1, 1, 1, 1]
        shape[2 + self.axis] = mask.shape[1]
        return mask.to(like.device).reshape(shape)

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        if not params["chosen"].any():
            return img
        return torch.where(self._broadcast_mask(params["mask"], img), _channel_view(self.image_fill, img), img)

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        if not params["chosen"].any():
            return segmentation
        mask = self._broadcast_mask(params["mask"], segmentation)
        return segmentation.masked_fill(mask, self.background)


class BatchedGaussianNoise(BatchedRandomTransform, ImageOnlyTransform):
    """Additive Gaussian noise, σ ~ U[0, σmax] drawn per example (paper §IV)."""

    def __init__(self, p_noise: float = 0.1, sigma_max: float = 0.3, seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_noise", p_noise)
        if sigma_max < 0:
            raise ValueError(f"sigma_max must be >= 0, got {sigma_max!r}")
        self.p_noise, self.sigma_max = p_noise, sigma_max

    def get_parameters(self, **data_dict) -> dict:
        n = data_dict["image"].shape[0]
        return {"chosen": self._chosen(self.p_noise, n), "sigma": self._uniform(0.0, self.sigma_max, n)}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        chosen = params["chosen"]
        if not chosen.any():
            return img
        index = _chosen_index(chosen, img)
        sigma = params["sigma"][chosen].to(device=img.device, dtype=img.dtype).reshape(-1, 1, 1, 1, 1)
        noise = torch.randn((len(index), *img.shape[1:]), generator=self._device_generator(img.device),
                            device=img.device, dtype=img.dtype)
        img[index] += sigma * noise
        return img


class BatchedHUWindow(BatchedRandomTransform, ImageOnlyTransform):
    """Random window [a, b] in HU on z-scored CT channels (paper eq. 3, kept in z-scores).

    nnU-Net's CT normalisation is z = (HU - mean) / std, so clamping HU to [a, b] is clamping z to
    [(a - mean) / std, (b - mean) / std]: the result is again a z-scored CT, as at inference.
    ``ct_mean_std`` holds (mean, std) per channel, ``None`` for channels that are not CT.
    """

    def __init__(self, ct_mean_std: Sequence[tuple[float, float] | None], p_window: float = 0.2,
                 lower_hu: Sequence[float] = (-1000.0, -150.0), upper_hu: Sequence[float] = (230.0, 1500.0),
                 seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_window", p_window)
        _check_range("lower_hu", lower_hu)
        _check_range("upper_hu", upper_hu)
        if lower_hu[1] >= upper_hu[0]:
            raise ValueError(f"window limits overlap: lower {tuple(lower_hu)!r}, upper {tuple(upper_hu)!r}")
        for ms in ct_mean_std:
            if ms is not None and not ms[1] > 0:
                raise ValueError(f"CT normalisation std must be > 0, got {ms!r}")
        self.ct_mean_std = list(ct_mean_std)
        self.p_window, self.lower_hu, self.upper_hu = p_window, tuple(lower_hu), tuple(upper_hu)

    def get_parameters(self, **data_dict) -> dict:
        n = data_dict["image"].shape[0]
        return {"chosen": self._chosen(self.p_window, n), "lower": self._uniform(*self.lower_hu, n),
                "upper": self._uniform(*self.upper_hu, n)}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        chosen = params["chosen"]
        if not chosen.any():
            return img
        index = _chosen_index(chosen, img)
        for c, mean_std in enumerate(self.ct_mean_std):
            if mean_std is None:
                continue
            mean, std = mean_std
            low = ((params["lower"][chosen] - mean) / std).to(device=img.device, dtype=img.dtype).reshape(-1, 1, 1, 1)
            high = ((params["upper"][chosen] - mean) / std).to(device=img.device, dtype=img.dtype).reshape(-1, 1, 1, 1)
            img[index, c] = torch.minimum(torch.maximum(img[index, c], low), high)
        return img


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(N,) sigmas in voxels -> (N, 2 radius + 1) normalised kernels; sigma 0 gives the identity."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    safe = sigma.clamp(min=1e-6)[:, None]
    kernels = torch.exp(-0.5 * (x[None] / safe) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    identity = (x == 0).to(torch.float64).expand_as(kernels)
    return torch.where((sigma > 0)[:, None], kernels, identity)


class BatchedGaussianBlur(BatchedRandomTransform, ImageOnlyTransform):
    """nnU-Net's Gaussian blur: σ ~ U(blur_sigma) per example, channel and axis; each channel p 0.5.

    One depthwise separable convolution per axis over all chosen (example, channel) pairs.
    """

    def __init__(self, p_blur: float = 0.2, blur_sigma: Sequence[float] = (0.5, 1.0), p_per_channel: float = 0.5,
                 seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_blur", p_blur)
        _check_probability("p_per_channel", p_per_channel)
        _check_range("blur_sigma", blur_sigma, minimum=0.0)
        self.p_blur, self.blur_sigma, self.p_per_channel = p_blur, tuple(blur_sigma), p_per_channel

    def get_parameters(self, **data_dict) -> dict:
        n, c = data_dict["image"].shape[:2]
        sigma = self._uniform(*self.blur_sigma, (n, c, 3))
        channel = torch.rand((n, c), generator=self.generator, dtype=torch.float64) < self.p_per_channel
        return {"chosen": self._chosen(self.p_blur, n), "sigma": sigma * channel[..., None]}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        chosen = params["chosen"]
        if not chosen.any() or self.blur_sigma[1] == 0:
            return img
        index = _chosen_index(chosen, img)
        sigma = params["sigma"][chosen]  # (n, C, 3)
        n, c = sigma.shape[:2]
        radius = max(1, math.ceil(3 * self.blur_sigma[1]))
        x = img[index].reshape(1, n * c, *img.shape[2:])
        for axis in range(3):
            kernels = gaussian_kernels(sigma[..., axis].reshape(-1), radius).to(device=img.device, dtype=img.dtype)
            shape = [n * c, 1, 1, 1, 1]
            shape[2 + axis] = 2 * radius + 1
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius  # F.pad lists the last axis first
            x = F.conv3d(F.pad(x, pad, mode="replicate"), kernels.reshape(shape), groups=n * c)
        img[index] = x.reshape(n, c, *img.shape[2:])
        return img


class BatchedBrightness(BatchedRandomTransform, ImageOnlyTransform):
    """nnU-Net's multiplicative brightness: x * m, m drawn per example and channel (BGContrast rule)."""

    def __init__(self, p_brightness: float = 0.15, brightness: Sequence[float] = (0.75, 1.25),
                 seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_brightness", p_brightness)
        _check_range("brightness", brightness, minimum=0.0)
        self.p_brightness, self.brightness = p_brightness, tuple(brightness)

    def get_parameters(self, **data_dict) -> dict:
        n, c = data_dict["image"].shape[:2]
        return {"chosen": self._chosen(self.p_brightness, n), "multiplier": self._bg_contrast(self.brightness, (n, c))}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        chosen = params["chosen"]
        if not chosen.any():
            return img
        index = _chosen_index(chosen, img)
        multiplier = params["multiplier"][chosen].to(device=img.device, dtype=img.dtype)
        img[index] *= multiplier.reshape(*multiplier.shape, 1, 1, 1)
        return img


def _spatial_stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mean, min and max over the spatial axes of (n, C, ...), shaped for broadcasting."""
    flat = x.flatten(2)
    keep = (1,) * (x.ndim - 2)
    return (flat.mean(2).reshape(*x.shape[:2], *keep), flat.amin(2).reshape(*x.shape[:2], *keep),
            flat.amax(2).reshape(*x.shape[:2], *keep))


class BatchedContrast(BatchedRandomTransform, ImageOnlyTransform):
    """nnU-Net's contrast: (x - mean) * f + mean, clamped to the old range, per example and channel."""

    def __init__(self, p_contrast: float = 0.15, contrast: Sequence[float] = (0.75, 1.25), seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_contrast", p_contrast)
        _check_range("contrast", contrast, minimum=0.0)
        self.p_contrast, self.contrast = p_contrast, tuple(contrast)

    def get_parameters(self, **data_dict) -> dict:
        n, c = data_dict["image"].shape[:2]
        return {"chosen": self._chosen(self.p_contrast, n), "factor": self._bg_contrast(self.contrast, (n, c))}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        chosen = params["chosen"]
        if not chosen.any():
            return img
        index = _chosen_index(chosen, img)
        x = img[index]
        factor = params["factor"][chosen].to(device=img.device, dtype=img.dtype).reshape(*x.shape[:2], 1, 1, 1)
        mean, low, high = _spatial_stats(x)
        img[index] = torch.clamp((x - mean) * factor + mean, low, high)
        return img


class BatchedLowResolution(BatchedRandomTransform, ImageOnlyTransform):
    """nnU-Net's low-resolution simulation: nearest down by s ~ U(scale), trilinear back up.

    ``ignore_axes`` keep their size (the first axis for anisotropic, "dummy 2-D" patches).
    """

    def __init__(self, p_low_resolution: float = 0.25, scale: Sequence[float] = (0.5, 1.0), p_per_channel: float = 0.5,
                 ignore_axes: Sequence[int] = (), seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_low_resolution", p_low_resolution)
        _check_probability("p_per_channel", p_per_channel)
        _check_range("scale", scale, minimum=1e-6)
        self.p_low_resolution, self.scale, self.p_per_channel = p_low_resolution, tuple(scale), p_per_channel
        self.ignore_axes = tuple(ignore_axes)

    def get_parameters(self, **data_dict) -> dict:
        n, c = data_dict["image"].shape[:2]
        channel = torch.rand((n, c), generator=self.generator, dtype=torch.float64) < self.p_per_channel
        return {"chosen": self._chosen(self.p_low_resolution, n), "channel": channel,
                "scale": self._uniform(*self.scale, (n, c))}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        shape = img.shape[2:]
        for b, c in (params["channel"] & params["chosen"][:, None]).nonzero().tolist():
            s = float(params["scale"][b, c])
            small = [size if axis in self.ignore_axes else max(1, round(size * s)) for axis, size in enumerate(shape)]
            down = F.interpolate(img[b:b + 1, c:c + 1], small, mode="nearest-exact")
            img[b, c] = F.interpolate(down, shape, mode="trilinear", align_corners=False)[0, 0]
        return img


class BatchedGamma(BatchedRandomTransform, ImageOnlyTransform):
    """nnU-Net's gamma on the [min, max]-rescaled image, mean and sd retained; optionally on -x."""

    def __init__(self, p_gamma: float = 0.3, gamma: Sequence[float] = (0.7, 1.5), invert: bool = False,
                 seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_gamma", p_gamma)
        _check_range("gamma", gamma, minimum=1e-6)
        self.p_gamma, self.gamma, self.invert = p_gamma, tuple(gamma), invert

    def get_parameters(self, **data_dict) -> dict:
        n, c = data_dict["image"].shape[:2]
        return {"chosen": self._chosen(self.p_gamma, n), "gamma": self._bg_contrast(self.gamma, (n, c))}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        chosen = params["chosen"]
        if not chosen.any():
            return img
        index = _chosen_index(chosen, img)
        x = -img[index] if self.invert else img[index]
        gamma = params["gamma"][chosen].to(device=img.device, dtype=img.dtype).reshape(*x.shape[:2], 1, 1, 1)
        mean, low, high = _spatial_stats(x)
        std = x.flatten(2).std(2).reshape(mean.shape)
        span = high - low
        y = ((x - low) / span.clamp(min=1e-7)) ** gamma * span + low
        y_mean, y_std = y.flatten(2).mean(2).reshape(mean.shape), y.flatten(2).std(2).reshape(mean.shape)
        y = (y - y_mean) * (std / y_std.clamp(min=1e-7)) + mean
        img[index] = -y if self.invert else y
        return img


class BatchedMirror(BatchedRandomTransform):
    """nnU-Net's mirroring: each allowed spatial axis flipped with probability p per example."""

    def __init__(self, axes: Sequence[int], p_mirror: float = 0.5, seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_mirror", p_mirror)
        if any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"axes must be spatial axes among 0, 1, 2, got {tuple(axes)!r}")
        self.axes, self.p_mirror = tuple(axes), p_mirror

    def get_parameters(self, **data_dict) -> dict:
        n = data_dict["image"].shape[0]
        return {"flips": {axis: self._chosen(self.p_mirror, n) for axis in self.axes}}

    def _flip(self, x: torch.Tensor, flips: dict) -> torch.Tensor:
        for axis, chosen in flips.items():
            if chosen.any():
                index = _chosen_index(chosen, x)
                x[index] = x[index].flip(2 + axis)
        return x

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        return self._flip(img, params["flips"])

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        return self._flip(segmentation, params["flips"])


class BatchedTrainingTargets(SegOnlyTransform):
    """Labels -> the loss targets: regions (optional) and nnU-Net's deep-supervision pyramid.

    Same operations as batchgeneratorsv2's ``ConvertSegmentationToRegionsTransform`` and
    ``DownsampleSegForDSTransform`` (nearest-exact), for a whole batch on its device.
    """

    def __init__(self, deep_supervision_scales: Sequence[Sequence[float]] | None,
                 regions: Sequence[int | Sequence[int]] | None = None):
        super().__init__()
        self.deep_supervision_scales = None if deep_supervision_scales is None else [
            [float(s) for s in (scale if isinstance(scale, (list, tuple)) else [scale] * 3)]
            for scale in deep_supervision_scales]
        self.regions = None if regions is None else [[r] if isinstance(r, int) else list(r) for r in regions]

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor | list[torch.Tensor]:
        if self.regions is not None:
            labels = segmentation[:, 0]
            segmentation = torch.stack([
                torch.isin(labels, torch.as_tensor(region, dtype=labels.dtype, device=labels.device))
                for region in self.regions], dim=1)
        if self.deep_supervision_scales is None:
            return segmentation
        as_float = segmentation.float()
        targets = []
        for scale in self.deep_supervision_scales:
            if all(s == 1 for s in scale):
                targets.append(segmentation)
            else:
                shape = [round(i * s) for i, s in zip(segmentation.shape[2:], scale)]
                targets.append(F.interpolate(as_float, shape, mode="nearest-exact").to(segmentation.dtype))
        return targets
