"""Label interpolation under the warp: nearest (paper 003) vs linear-then-argmax (nnU-Net), against the truth.

Input: organs as analytic ellipsoids (overlapping, drawn in order, touching each other and the volume
edge), voxelised at the voxel centres. Each warp (rotation, scale s, in one ``BatchedAffineWarp``)
is applied to the voxelised labels; the truth is the analytic label at the exact sampling point
A (x - c) + c + o of every output voxel. Reported per warp: the fraction of voxels whose label
differs from the truth, over the voxels within 2 voxels of a boundary (where the two modes can
differ), and the time per batch on this CPU.

    python benchmarks/label_interpolation.py [--size 96] [--labels 8] [--seed 0]
"""

import argparse
import math
import time

SCALES = (0.7, 1.0, 1.4)  # < 1 magnifies (a smaller region fills the patch), nnU-Net's range (0.7, 1.4)


def ellipsoids(n_labels: int, size: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.25 * size, 0.75 * size, (n_labels, 3))
    radii = rng.uniform(0.08 * size, 0.3 * size, (n_labels, 3))
    angles = rng.uniform(-math.pi, math.pi, (n_labels, 3))
    return centres, radii, angles


def analytic_labels(points, shapes):
    """Label at continuous points (..., 3): the last ellipsoid that contains the point, else 0."""
    import numpy as np
    import torch

    from nnunet_ctorg.augmentation.transforms import rotation_matrices

    centres, radii, angles = shapes
    labels = np.zeros(points.shape[:-1], dtype=np.int16)
    rotations = rotation_matrices(torch.from_numpy(angles)).numpy()
    for k, (c, r, rot) in enumerate(zip(centres, radii, rotations), start=1):
        local = (points - c) @ rot
        labels[((local / r) ** 2).sum(-1) <= 1] = k
    return labels


def compare(size: int, n_labels: int, seed: int) -> list[tuple]:
    import numpy as np
    import torch
    from scipy import ndimage

    from nnunet_ctorg.augmentation.transforms import BatchedAffineWarp, rotation_matrices

    shapes = ellipsoids(n_labels, size, seed)
    crop = (size,) * 3
    patch = (int(size * 0.6),) * 3
    voxels = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in crop], indexing="ij"), -1)
    labels = torch.from_numpy(analytic_labels(voxels, shapes))[None, None]
    image = torch.zeros((1, 1, *crop))
    rows = []
    for scale in SCALES:
        matrix = rotation_matrices(torch.tensor([[0.3, -0.2, 0.25]], dtype=torch.float64))[0] * scale
        c = (np.array(patch) - 1) / 2
        offset = (np.array(crop) - np.array(patch)) // 2
        out_voxels = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in patch], indexing="ij"), -1)
        sampled_at = (out_voxels - c) @ matrix.numpy().T + c + offset
        truth = torch.from_numpy(analytic_labels(sampled_at, shapes))
        boundary = ndimage.morphological_gradient(truth.numpy(), size=5) > 0
        result = [scale]
        for mode in ("nearest", "linear"):
            warp = BatchedAffineWarp(patch, [0.0], 0.0, 0.0, p_scaling=0.0, label_interpolation=mode, seed=0)
            warp.draw_affine = lambda n, m=matrix: (m.repeat(n, 1, 1), torch.zeros((n, 3), dtype=torch.float64))
            start = time.perf_counter()
            out = warp(image=image.clone(), segmentation=labels.clone())["segmentation"][0, 0]
            elapsed = time.perf_counter() - start
            wrong = (out != truth).numpy()
            result += [float(wrong[boundary].mean()), elapsed]
        rows.append(tuple(result))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=96, help="edge of the labelled input crop in voxels")
    parser.add_argument("--labels", type=int, default=8, help="number of organs (ellipsoids)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the ellipsoids")
    args = parser.parse_args()
    rows = compare(args.size, args.labels, args.seed)
    print(f"{args.labels} analytic organs, {args.size}^3 crop -> {int(args.size * 0.6)}^3 patch, rotation "
          "(0.3, -0.2, 0.25) rad; wrong labels among the voxels within 2 voxels of a boundary")
    print("| scale | nearest wrong | linear wrong | linear / nearest | nearest ms | linear ms |")
    print("|---|---|---|---|---|---|")
    for scale, nearest, t_nearest, linear, t_linear in rows:
        print(f"| {scale} | {nearest:.2%} | {linear:.2%} | {linear / max(nearest, 1e-12):.2f} | "
              f"{1000 * t_nearest:.0f} | {1000 * t_linear:.0f} |")


if __name__ == "__main__":
    main()
