"""Batched augmentation transforms that run on the device the batch is on (paper 003 §IV).

They follow batchgeneratorsv2's ``BasicTransform`` (``get_parameters`` / ``apply``) but take a whole
batch: ``image`` (B, C, X, Y, Z) float and ``segmentation`` (B, 1, X, Y, Z) integer, -1 where the
data loader padded. ``get_parameters`` reads only shapes and draws every random number of the batch on
the CPU from the transform's own seeded generator, as tensors over the whole batch; examples an
operation is not drawn for get identity parameters (multiplier 1, σ 0, window ±inf, ...), so ``apply``
runs the same kernels on every example and never asks the device which examples were chosen.
Decisions that change what runs (nothing chosen at all, the per-example size of a low-resolution
copy, which examples need interpolation) are read from the CPU copy under ``params["host"]``:
``DeviceAugmentation`` sends all parameters of a batch in one non-blocking copy and keeps that copy.
Used alone, a transform moves its own parameters. Per-voxel noise is drawn on the batch's device.
"""

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform, SegOnlyTransform

LABEL_INTERPOLATIONS = ("linear", "nearest")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_range(name: str, value: Sequence[float], minimum: float | None = None) -> None:
    if len(value) != 2 or value[0] > value[1] or (minimum is not None and value[0] < minimum):
        bound = "-inf" if minimum is None else minimum
        raise ValueError(f"{name} must be (low, high) with {bound} <= low <= high, got {value!r}")


def host(params: dict) -> dict:
    """The CPU copy of a transform's parameters (the parameters themselves when nothing was moved)."""
    return params.get("host", params)


def on_device(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` on ``like``'s device, with ``like``'s dtype unless it is boolean (a no-op once moved)."""
    dtype = value.dtype if value.dtype == torch.bool else like.dtype
    return value.to(device=like.device, dtype=dtype, non_blocking=True)


def spatial_view(values: torch.Tensor, ndim: int = 5) -> torch.Tensor:
    """(B,) or (B, C) parameters shaped to broadcast over (B, C, X, Y, Z)."""
    return values.reshape(*values.shape, *(1,) * (ndim - values.ndim))


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

    def _chosen(self, p: float, size: Sequence[int] | int) -> torch.Tensor:
        """Which examples (or example-channel pairs) receive an operation of probability p (bool, CPU)."""
        size = (size,) if isinstance(size, int) else tuple(size)
        return torch.rand(size, generator=self.generator, dtype=torch.float64) < p

    def _bg_contrast(self, value_range: Sequence[float], size: Sequence[int]) -> torch.Tensor:
        """batchgeneratorsv2's ``BGContrast`` draw: half below 1, half above 1 (when the range spans 1); a range
        on one side of 1 is drawn uniformly (``BGContrast`` would draw U[low, 1] or U(1, high) there, out of it)."""
        low, high = value_range
        below = self._uniform(low, min(high, 1.0), size)
        above = self._uniform(max(low, 1.0), high, size)
        pick_below = ((torch.rand(tuple(size), generator=self.generator, dtype=torch.float64) < 0.5) & (low < 1.0)
                      | (high < 1.0))
        return torch.where(pick_below, below, above)

    def _device_generator(self, device: torch.device) -> torch.Generator | None:
        if device.type == "meta":  # shape-only runs (the tests' check that nothing reads device data)
            return None
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


def required_crop_size(patch_size: Sequence[int], rotation: float, in_plane_only: bool,
                       scaling: Sequence[float], shear: float, affine_noise: float = 0.0, displacement: float = 0.0,
                       spacing: Sequence[float] | None = None, angle_steps: int = 25) -> tuple[int, ...]:
    """The smallest crop (patch + an even margin per axis) that holds every point a warp can sample.

    A warp samples ``A (x - c) + c + d`` for x in the patch; with A = R . Sh . S (rotation up to
    ``rotation`` per axis, shear entries up to ``shear``, isotropic scale up to ``max(scaling)``)
    plus entries of ``affine_noise``, ``|A (x - c)|`` is bounded per axis by ``(|R| M max(scaling) +
    affine_noise) h``, M the bound of |Sh| (1 on the diagonal, ``shear`` off it, on the axes that warp)
    and h the half patch; |R| is maximised over a grid of ``angle_steps`` angles per axis (one voxel
    of slack on the axes that grow covers what the grid misses). With ``spacing`` (physical
    rotations) the bound is that of S⁻¹ A S. Mirroring does not change the extent.
    """
    half = (np.asarray(patch_size, dtype=np.float64) - 1) / 2
    free = np.array([not in_plane_only, True, True])
    angles = np.linspace(-rotation, rotation, angle_steps)
    grid = np.stack(np.meshgrid(angles, angles, angles, indexing="ij"), -1).reshape(-1, 3)
    if in_plane_only:
        grid = np.unique(grid * np.array([1.0, 0.0, 0.0]), axis=0)
    rot = rotation_matrices(torch.from_numpy(grid)).numpy()
    shear_bound = np.where(np.eye(3, dtype=bool), 1.0, shear * (free[:, None] & free[None, :]))
    scale = np.where(free, max(scaling), 1.0)
    if spacing is not None:
        s = np.asarray(spacing, dtype=np.float64)
        rot = rot * (s[None, None, :] / s[None, :, None])  # S⁻¹ R S
        shear_bound = shear_bound * (s[None, :] / s[:, None])
    bound = np.abs(rot) @ (shear_bound * scale[None, :]) + affine_noise
    extent = (bound @ half).max(axis=0) + displacement  # largest |offset from the centre| per axis
    excess = extent - half
    margin = np.where(excess > 1e-9, np.ceil(excess - 1e-9) + 1, 0)
    return tuple(int(p + 2 * m) for p, m in zip(patch_size, margin))


class BatchedAffineWarp(BatchedRandomTransform):
    """Random affine warp, mirroring and crop to the patch; all interpolated examples in one ``grid_sample``.

    Output voxel x (patch coordinates) samples the input at ``A F (x - c_out) + c_out + o + d``: o the
    integer offset that centres the patch in the (larger) input crop, F the mirroring (a flip of the
    output about its centre), A = rotation . shear . scaling . reflection + noise; for equal shapes
    this is the paper's x' = A x + b with b = c + d - A c. With ``spacing`` the rotation and shear act
    in millimetres (A_vox = S⁻¹ A S). Examples drawn with A = I and d = 0 are cropped and flipped
    without interpolation. Image trilinear; labels ``"linear"`` (nnU-Net: every label's indicator
    interpolated, the largest wins) or ``"nearest"`` (paper). Outside the
    volume (and where the loader padded, -1) the image is ``image_fill`` (per channel, air) and the
    label competes as -1, which becomes background (0): nnU-Net's rule, the same as in validation.
    """

    def __init__(self, patch_size: Sequence[int], image_fill: Sequence[float], p_rotation: float = 0.2,
                 rotation: float = math.radians(30), in_plane_only: bool = False, p_scaling: float = 0.2,
                 scaling: Sequence[float] = (0.7, 1.4), p_shear: float = 0.0, shear: float = 0.1,
                 affine_noise: float = 0.0, p_reflection: float = 0.0, displacement: float = 0.0,
                 mirror_axes: Sequence[int] = (), p_mirror: float = 0.5, spacing: Sequence[float] | None = None,
                 label_interpolation: str = "nearest", seed: int | None = None):
        super().__init__(seed)
        if len(patch_size) != 3 or min(patch_size) < 2:
            raise ValueError(f"patch_size must be three sizes >= 2, got {patch_size!r}")
        for name, p in (("p_rotation", p_rotation), ("p_scaling", p_scaling), ("p_shear", p_shear),
                        ("p_reflection", p_reflection), ("p_mirror", p_mirror)):
            _check_probability(name, p)
        _check_range("scaling", scaling, minimum=1e-6)
        for name, value in (("rotation", rotation), ("shear", shear), ("affine_noise", affine_noise),
                            ("displacement", displacement)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if any(a not in (0, 1, 2) for a in mirror_axes):
            raise ValueError(f"mirror_axes must be spatial axes among 0, 1, 2, got {tuple(mirror_axes)!r}")
        if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
            raise ValueError(f"spacing must be three positive sizes in mm, got {spacing!r}")
        if label_interpolation not in LABEL_INTERPOLATIONS:
            raise ValueError(f"label_interpolation must be one of {LABEL_INTERPOLATIONS}, got {label_interpolation!r}")
        self.patch_size = tuple(int(s) for s in patch_size)
        self.image_fill = tuple(float(v) for v in image_fill)
        self.p_rotation, self.rotation, self.in_plane_only = p_rotation, rotation, in_plane_only
        self.p_scaling, self.scaling = p_scaling, tuple(scaling)
        self.p_shear, self.shear, self.affine_noise = p_shear, shear, affine_noise
        self.p_reflection, self.displacement = p_reflection, displacement
        self.mirror_axes, self.p_mirror = tuple(mirror_axes), p_mirror
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self.label_interpolation = label_interpolation

    def crop_size(self) -> tuple[int, ...]:
        """The input crop these ranges need (``required_crop_size``)."""
        return required_crop_size(self.patch_size, self.rotation if self.p_rotation > 0 else 0.0, self.in_plane_only,
                                  self.scaling if self.p_scaling > 0 else (1.0, 1.0),
                                  self.shear if self.p_shear > 0 else 0.0, self.affine_noise, self.displacement,
                                  self.spacing)

    def draw_affine(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n matrices A (n, 3, 3) in voxels and displacements d (n, 3) in voxels, float64 on the CPU."""
        free = torch.tensor([not self.in_plane_only, True, True])  # axes that may rotate/scale/shear
        angles = self._uniform(-self.rotation, self.rotation, (n, 3))
        angles[:, 1:] *= ~torch.tensor(self.in_plane_only)  # dummy 2-D: rotate about axis 0 only
        angles *= self._chosen(self.p_rotation, n)[:, None]
        scale = self._uniform(*self.scaling, n)
        scale = torch.where(self._chosen(self.p_scaling, n), scale, torch.ones_like(scale))
        scaling = torch.diag_embed(torch.where(free, scale[:, None], torch.ones(n, 3, dtype=torch.float64)))
        off_diagonal = ~torch.eye(3, dtype=torch.bool) & free[:, None] & free[None, :]
        shear_values = self._uniform(-self.shear, self.shear, (n, 3, 3)) * self._chosen(self.p_shear, n)[:, None, None]
        shearing = torch.eye(3, dtype=torch.float64) + shear_values * off_diagonal
        reflect = self._chosen(self.p_reflection, (n, 3))
        reflection = torch.diag_embed(torch.where(reflect, -1.0, 1.0).to(torch.float64))
        noise = self._uniform(-self.affine_noise, self.affine_noise, (n, 3, 3))
        matrix = rotation_matrices(angles) @ shearing @ scaling @ reflection + noise
        if self.spacing is not None:
            s = torch.tensor(self.spacing, dtype=torch.float64)
            matrix = torch.diag(1 / s) @ matrix @ torch.diag(s)
        displacement = self._uniform(-self.displacement, self.displacement, (n, 3))
        return matrix, displacement

    def get_parameters(self, **data_dict) -> dict:
        image = data_dict["image"]
        if image.ndim != 5:
            raise ValueError(f"expected a batch (B, C, X, Y, Z), got shape {tuple(image.shape)}")
        input_shape = tuple(image.shape[2:])
        if any(i < p for i, p in zip(input_shape, self.patch_size)):
            raise ValueError(f"input crop {input_shape} is smaller than the patch {self.patch_size}")
        n = image.shape[0]
        matrix, displacement = self.draw_affine(n)
        flips = self._chosen(self.p_mirror, (n, 3)) & torch.tensor([a in self.mirror_axes for a in range(3)])
        identity = torch.eye(3, dtype=torch.float64)
        warped = ~((matrix == identity).all(dim=(1, 2)) & (displacement == 0).all(dim=1))
        offset = [(i - p) // 2 for i, p in zip(input_shape, self.patch_size)]
        mirrored = matrix @ torch.diag_embed(torch.where(flips, -1.0, 1.0).to(torch.float64))
        # the input box the interpolated examples read: the corners of the patch bound an affine image
        c_out = torch.tensor([(p - 1) / 2 for p in self.patch_size], dtype=torch.float64)
        corners = torch.cartesian_prod(*[torch.tensor([0.0, p - 1.0], dtype=torch.float64) for p in self.patch_size])
        points = (mirrored @ (corners - c_out).T).transpose(1, 2) + c_out + torch.tensor(offset) + displacement[:, None]
        box_low, box_high = [0] * 3, [i - 1 for i in input_shape]
        if warped.any():
            reached = points[warped].reshape(-1, 3)
            # one voxel beyond the reach, so that float32 rounding of the grid never leaves the box
            box_low = [int(v) for v in (reached.amin(0).floor() - 1).clamp(min=0).tolist()]
            box_high = [min(max(int(v) + 1, 1), i - 1) for v, i in zip(reached.amax(0).ceil().tolist(), input_shape)]
            # at least two voxels per axis: grid_sample maps a one-voxel axis onto that voxel (nothing is outside)
            box_low = [min(low, high - 1) for low, high in zip(box_low, box_high)]
        box_shape = [high - low + 1 for low, high in zip(box_low, box_high)]
        # grid_sample coordinates: box [-1, 1] <-> its voxels 0..S-1 (align_corners), axes reversed (x = last)
        d_in = torch.diag(torch.tensor([max(s - 1, 1) / 2 for s in box_shape], dtype=torch.float64))
        d_out = torch.diag(torch.tensor([(s - 1) / 2 for s in self.patch_size], dtype=torch.float64))
        shift = torch.tensor([(p - 1) / 2 + o - low - (s - 1) / 2
                              for s, p, o, low in zip(box_shape, self.patch_size, offset, box_low)],
                             dtype=torch.float64)
        d_in_inv = torch.linalg.inv(d_in)
        linear = d_in_inv @ mirrored @ d_out
        translation = (d_in_inv @ (shift + displacement)[..., None])[..., 0]
        reverse = torch.flip(torch.eye(3, dtype=torch.float64), (0,))
        theta = torch.cat([reverse @ linear @ reverse, (reverse @ translation[..., None])], dim=2)
        return {"theta": theta, "fill": torch.tensor(self.image_fill, dtype=torch.float64), "warped": warped,
                "flips": flips, "offset": offset, "box": (tuple(box_low), tuple(box_shape)), "matrix": matrix,
                "displacement": displacement}

    def apply(self, data_dict: dict, **params) -> dict:
        image, seg = data_dict["image"], data_dict.get("segmentation")
        cpu = host(params)
        fill = spatial_view(on_device(params["fill"], image)[None])
        crop = (slice(None), slice(None)) + tuple(slice(o, o + p) for o, p in zip(cpu["offset"], self.patch_size))
        out_image = image[crop].clone()
        out_seg = seg[crop].clone() if seg is not None else None
        if seg is not None:
            out_image = torch.where(out_seg[:, :1] < 0, fill, out_image)  # the loader's padding: outside the volume
        warped = [b for b in range(image.shape[0]) if bool(cpu["warped"][b])]
        if warped:
            low, shape = cpu["box"]
            box = (slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(low, shape))
            theta = on_device(params["theta"], image)
            select = (lambda x: x) if len(warped) == image.shape[0] else (
                lambda x: torch.cat([x[b:b + 1] for b in warped]))
            box_image, box_seg = select(image[box]), select(seg[box]) if seg is not None else None
            if seg is not None:
                box_image = torch.where(box_seg[:, :1] < 0, fill, box_image)
            grid = F.affine_grid(select(theta), [len(warped), 1, *self.patch_size], align_corners=True)
            sampled = F.grid_sample(box_image - fill, grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=True) + fill
            sampled_seg = self._sample_labels(box_seg, grid) if seg is not None else None
            for i, b in enumerate(warped):
                out_image[b] = sampled[i]
                if seg is not None:
                    out_seg[b] = sampled_seg[i]
        for b in range(image.shape[0]):
            axes = [2 + a for a in range(3) if bool(cpu["flips"][b, a])]
            if b not in warped and axes:  # interpolated examples were mirrored through the grid
                out_image[b:b + 1] = out_image[b:b + 1].flip(axes)
                if out_seg is not None:
                    out_seg[b:b + 1] = out_seg[b:b + 1].flip(axes)
        data_dict["image"] = out_image
        if out_seg is not None:
            data_dict["segmentation"] = out_seg.clamp_(min=0)  # outside the volume -> background
        return data_dict

    def _sample_labels(self, seg: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Labels at the grid points; -1 outside the volume."""
        if self.label_interpolation == "nearest":
            shifted = (seg + 1).to(grid.dtype)  # 0 = outside, also after zero padding
            sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=True)
            return (sampled.round() - 1).to(seg.dtype)
        if seg.device.type != "cpu":
            return self._sample_labels_linear(seg, grid)
        # on a CPU, slabs of ~2^18 points per example keep the temporaries in cache
        step = max(1, (1 << 18) // (grid.shape[2] * grid.shape[3]))
        return torch.cat([torch.cat([self._sample_labels_linear(seg[b:b + 1], grid[b:b + 1, start:start + step])
                                     for start in range(0, grid.shape[1], step)], dim=2)
                          for b in range(seg.shape[0])])

    @staticmethod
    def _sample_labels_linear(seg: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Linear-then-argmax labels (nnU-Net's ``SpatialTransform``) from the 8 voxels around each point.

        Interpolating every label's indicator and taking the largest equals giving each of the 8
        neighbours its trilinear weight and letting the label with the largest summed weight win, so
        only labels among the 8 neighbours can win: no one-hot of the input, no list of labels, and
        the cost does not grow with the number of labels. Neighbours outside the box count as the
        label -1 (outside), as nnU-Net's padding label does; ties go to the lowest label, as an argmax.
        """
        n, shape = seg.shape[0], seg.shape[2:]
        strides = (shape[1] * shape[2], shape[2], 1)
        offsets, weights_1d, inside_1d = [], [], []  # per axis, for the lower (0) and upper (1) neighbour
        for axis in range(3):
            coord = (grid[..., 2 - axis] + 1) * ((shape[axis] - 1) / 2)  # voxels of the box, array order
            low = coord.floor()
            frac = coord - low
            low = low.to(torch.int32)
            pair = (low, low + 1)
            inside_1d.append([(i >= 0) & (i < shape[axis]) for i in pair])
            offsets.append([i.clamp(0, shape[axis] - 1) * strides[axis] for i in pair])
            weights_1d.append([1 - frac, frac])
        flat = seg.reshape(n, -1)
        labels, weights = [], []
        for j in (0, 1):
            for k in (0, 1):
                offset_jk = offsets[1][j] + offsets[2][k]
                weight_jk = weights_1d[1][j] * weights_1d[2][k]
                inside_jk = inside_1d[1][j] & inside_1d[2][k]
                for i in (0, 1):
                    index = (offsets[0][i] + offset_jk).reshape(n, -1).to(torch.int64)
                    label = torch.gather(flat, 1, index).reshape(offset_jk.shape)
                    labels.append(torch.where(inside_1d[0][i] & inside_jk, label, torch.full_like(label, -1)))
                    weights.append(weights_1d[0][i] * weight_jk)
        if seg.device.type == "cpu":  # no device to keep in step: vote only where the neighbours disagree
            stacked = torch.stack(labels).reshape(8, -1)
            mixed = (stacked != stacked[:1]).any(dim=0).nonzero()[:, 0]
            result = stacked[0].clone()
            if len(mixed):
                mixed_weights = torch.stack(weights).reshape(8, -1)[:, mixed]
                result[mixed] = BatchedAffineWarp._vote(list(stacked[:, mixed]), list(mixed_weights), seg.dtype)
            return result.reshape(labels[0].shape)[:, None]
        return BatchedAffineWarp._vote(labels, weights, seg.dtype)[:, None]

    @staticmethod
    def _vote(labels: list[torch.Tensor], weights: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """The label with the largest summed weight among 8 (label, weight) pairs; ties: the lowest label."""
        scores = [w.clone() for w in weights]
        for a in range(8):
            for b in range(a + 1, 8):
                same = labels[a] == labels[b]
                scores[a] += weights[b] * same
                scores[b] += weights[a] * same
        best = torch.stack(scores).amax(dim=0)
        winner = torch.full_like(labels[0], torch.iinfo(dtype).max)
        for label, score in zip(labels, scores):
            winner = torch.where((score == best) & (label < winner), label, winner)
        return winner


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
        return {"mask": mask, "start": start, "delta": delta, "chosen": chosen,
                "fill": torch.tensor(self.image_fill, dtype=torch.float64)}

    def _broadcast_mask(self, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        shape = [mask.shape[0], 1, 1, 1, 1]
        shape[2 + self.axis] = mask.shape[1]
        return on_device(mask, like).reshape(shape)

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        if not host(params)["chosen"].any():
            return img
        fill = spatial_view(on_device(params["fill"], img)[None])
        return torch.where(self._broadcast_mask(params["mask"], img), fill, img)

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        if not host(params)["chosen"].any():
            return segmentation
        return segmentation.masked_fill(self._broadcast_mask(params["mask"], segmentation), self.background)


class BatchedGaussianNoise(BatchedRandomTransform, ImageOnlyTransform):
    """Additive Gaussian noise, σ ~ U[0, σmax] per example, one σ for all channels (paper §IV; nnU-Net's
    ``GaussianNoiseTransform`` draws its "noise_variance" (0, 0.1) and uses it as the standard deviation)."""

    def __init__(self, p_noise: float = 0.1, sigma_max: float = 0.1, seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_noise", p_noise)
        if sigma_max < 0:
            raise ValueError(f"sigma_max must be >= 0, got {sigma_max!r}")
        self.p_noise, self.sigma_max = p_noise, sigma_max

    def get_parameters(self, **data_dict) -> dict:
        n = data_dict["image"].shape[0]
        chosen = self._chosen(self.p_noise, n)
        return {"chosen": chosen, "sigma": self._uniform(0.0, self.sigma_max, n) * chosen}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        if not host(params)["chosen"].any():
            return img
        noise = torch.randn(img.shape, generator=self._device_generator(img.device), device=img.device,
                            dtype=img.dtype)
        return img.add_(noise.mul_(spatial_view(on_device(params["sigma"], img))))


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
        n, c = data_dict["image"].shape[:2]
        if c != len(self.ct_mean_std):
            raise ValueError(f"the window was built for {len(self.ct_mean_std)} channels, the batch has {c}")
        chosen = self._chosen(self.p_window, n)
        lower_hu, upper_hu = self._uniform(*self.lower_hu, n), self._uniform(*self.upper_hu, n)
        low = torch.full((n, c), -math.inf, dtype=torch.float64)
        high = torch.full((n, c), math.inf, dtype=torch.float64)
        for channel, mean_std in enumerate(self.ct_mean_std):
            if mean_std is not None:
                mean, std = mean_std
                low[:, channel] = torch.where(chosen, (lower_hu - mean) / std, -math.inf)
                high[:, channel] = torch.where(chosen, (upper_hu - mean) / std, math.inf)
        return {"chosen": chosen, "lower": lower_hu, "upper": upper_hu, "low": low, "high": high}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        if not host(params)["chosen"].any():
            return img
        low, high = on_device(params["low"], img), on_device(params["high"], img)
        return torch.clamp(img, spatial_view(low), spatial_view(high))


def blur_kernel_size(sigma: float, truncate: float = 6.0) -> int:
    """batchgeneratorsv2's Gaussian kernel size: sigma x truncate + 0.5 rounded to the nearest odd number."""
    n = sigma * truncate + 0.5
    rounded = round(n)
    if rounded % 2 == 1:
        return rounded
    return rounded + 1 if n - rounded >= 0 else rounded - 1


def gaussian_kernels(sigma: torch.Tensor, radius: int, truncate: float = 6.0) -> torch.Tensor:
    """(N,) sigmas in voxels -> (N, 2 radius + 1) kernels, each batchgeneratorsv2's kernel for its sigma
    (size ``blur_kernel_size``, normalised) zero-padded to the common size; sigma 0 gives the identity."""
    kernels = torch.zeros((len(sigma), 2 * radius + 1), dtype=torch.float32)
    kernels[:, radius] = 1.0
    for i, s in enumerate(sigma.tolist()):
        if s > 0:
            size = blur_kernel_size(s, truncate)
            half = (size - 1) // 2
            if half > radius:
                raise ValueError(f"sigma {s!r} needs a kernel radius {half}, more than {radius}")
            x = torch.linspace(-half, half, steps=size)
            pdf = torch.exp(-0.5 * (x / s).pow(2))
            kernels[i] = 0.0
            kernels[i, radius - half:radius + half + 1] = pdf / pdf.sum()
    return kernels


class BatchedGaussianBlur(BatchedRandomTransform, ImageOnlyTransform):
    """nnU-Net's Gaussian blur: σ ~ U(blur_sigma) per example, channel and axis; each channel p 0.5.

    batchgeneratorsv2's kernels (truncated at 6 σ) and reflect padding; one depthwise convolution per
    axis over the whole batch, identity kernels where no blur was drawn.
    """

    def __init__(self, p_blur: float = 0.2, blur_sigma: Sequence[float] = (0.5, 1.0), p_per_channel: float = 0.5,
                 seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_blur", p_blur)
        _check_probability("p_per_channel", p_per_channel)
        _check_range("blur_sigma", blur_sigma, minimum=0.0)
        self.p_blur, self.blur_sigma, self.p_per_channel = p_blur, tuple(blur_sigma), p_per_channel
        self.radius = max(blur_kernel_size(s) for s in np.linspace(*self.blur_sigma, 101)) // 2 \
            if self.blur_sigma[1] > 0 else 0

    def get_parameters(self, **data_dict) -> dict:
        n, c = data_dict["image"].shape[:2]
        sigma = self._uniform(*self.blur_sigma, (n, c, 3))
        channel = self._chosen(self.p_per_channel, (n, c))
        chosen = self._chosen(self.p_blur, n)
        sigma = sigma * (channel & chosen[:, None])[..., None]
        kernels = gaussian_kernels(sigma.permute(2, 0, 1).reshape(-1), self.radius).reshape(3, n * c, -1)
        return {"chosen": chosen & (sigma > 0).any(dim=(1, 2)), "sigma": sigma, "kernels": kernels}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        if not host(params)["chosen"].any() or self.radius == 0:
            return img
        n, c = img.shape[:2]
        kernels = on_device(params["kernels"], img)
        x = img.reshape(1, n * c, *img.shape[2:])
        for axis in range(3):
            shape = [n * c, 1, 1, 1, 1]
            shape[2 + axis] = 2 * self.radius + 1
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = self.radius  # F.pad lists the last axis first
            x = F.conv3d(F.pad(x, pad, mode="reflect"), kernels[axis].reshape(shape), groups=n * c)
        return x.reshape(img.shape)


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
        chosen = self._chosen(self.p_brightness, n)
        multiplier = torch.where(chosen[:, None], self._bg_contrast(self.brightness, (n, c)), 1.0)
        return {"chosen": chosen, "multiplier": multiplier}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        if not host(params)["chosen"].any():
            return img
        return img.mul_(spatial_view(on_device(params["multiplier"], img)))


def _spatial_stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Mean, min and max over the spatial axes of (B, C, ...), shaped for broadcasting."""
    flat = x.flatten(2)
    keep = (1,) * (x.ndim - 2)
    low, high = torch.aminmax(flat, dim=2)
    shape = (*x.shape[:2], *keep)
    return flat.mean(2).reshape(shape), low.reshape(shape), high.reshape(shape)


class BatchedContrast(BatchedRandomTransform, ImageOnlyTransform):
    """nnU-Net's contrast: (x - mean) * f + mean, clamped to the old range, per example and channel."""

    def __init__(self, p_contrast: float = 0.15, contrast: Sequence[float] = (0.75, 1.25), seed: int | None = None):
        super().__init__(seed)
        _check_probability("p_contrast", p_contrast)
        _check_range("contrast", contrast, minimum=0.0)
        self.p_contrast, self.contrast = p_contrast, tuple(contrast)

    def get_parameters(self, **data_dict) -> dict:
        n, c = data_dict["image"].shape[:2]
        chosen = self._chosen(self.p_contrast, n)
        return {"chosen": chosen, "factor": torch.where(chosen[:, None], self._bg_contrast(self.contrast, (n, c)), 1.0)}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        if not host(params)["chosen"].any():
            return img
        mean, low, high = _spatial_stats(img)
        contrasted = torch.clamp((img - mean) * spatial_view(on_device(params["factor"], img)) + mean, low, high)
        return torch.where(spatial_view(on_device(params["chosen"], img)), contrasted, img)


class BatchedLowResolution(BatchedRandomTransform, ImageOnlyTransform):
    """nnU-Net's low-resolution simulation: nearest-exact down by s ~ U(scale), trilinear back up.

    ``ignore_axes`` keep their size (the first axis for anisotropic, "dummy 2-D" patches). The size of
    each low-resolution copy comes from the CPU copy of the parameters, one example-channel at a time.
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
        channel = self._chosen(self.p_per_channel, (n, c))
        chosen = self._chosen(self.p_low_resolution, n)
        return {"chosen": chosen, "channel": channel & chosen[:, None], "scale": self._uniform(*self.scale, (n, c))}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        cpu = host(params)
        shape = img.shape[2:]
        for b, c in cpu["channel"].nonzero().tolist():  # a CPU tensor: no device synchronisation
            s = float(cpu["scale"][b, c].to(torch.float32))  # batchgeneratorsv2 rounds with a float32 scale
            small = [size if axis in self.ignore_axes else max(1, round(size * s)) for axis, size in enumerate(shape)]
            down = F.interpolate(img[b:b + 1, c:c + 1], small, mode="nearest-exact")
            img[b:b + 1, c:c + 1] = F.interpolate(down, shape, mode="trilinear", align_corners=False)
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
        chosen = self._chosen(self.p_gamma, n)
        return {"chosen": chosen, "gamma": torch.where(chosen[:, None], self._bg_contrast(self.gamma, (n, c)), 1.0)}

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        if not host(params)["chosen"].any():
            return img
        x = -img if self.invert else img
        gamma = spatial_view(on_device(params["gamma"], img))
        mean, low, high = _spatial_stats(x)
        std = x.flatten(2).std(2).reshape(mean.shape)
        span = high - low
        y = ((x - low) / span.clamp(min=1e-7)) ** gamma * span + low
        y_mean, y_std = y.flatten(2).mean(2).reshape(mean.shape), y.flatten(2).std(2).reshape(mean.shape)
        y = (y - y_mean) * (std / y_std.clamp(min=1e-7)) + mean
        return torch.where(spatial_view(on_device(params["chosen"], img)), -y if self.invert else y, img)


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
                torch.stack([labels == int(v) for v in region]).any(dim=0) for region in self.regions], dim=1)
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
