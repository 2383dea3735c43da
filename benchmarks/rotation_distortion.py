"""How much nnU-Net's voxel-space rotations stretch anatomy on anisotropic plans, and physical ones (issue 18).

For each spacing, 20,000 warps with nnU-Net's 3-D rotation range (±30° about each axis, p = 1) are drawn
by ``BatchedAffineWarp`` with voxel rotations (nnU-Net's) and with ``spacing`` (physical rotations,
A_vox = S⁻¹ A S); the warp seen in millimetres, S A_vox S⁻¹, is a pure rotation only if its largest and
smallest singular values agree. Prints their ratio (median, 90th percentile, worst).

    python benchmarks/rotation_distortion.py
"""

import argparse
import math

SPACINGS = [(1.5, 0.8, 0.8), (3.0, 0.8, 0.8), (5.0, 0.7, 0.7)]


def stretch(spacing, physical: bool, n: int = 20000):
    import torch

    from nnunet_ctorg.augmentation.transforms import BatchedAffineWarp

    warp = BatchedAffineWarp((8, 8, 8), [0.0], p_rotation=1.0, rotation=math.radians(30), p_scaling=0.0,
                             spacing=spacing if physical else None, seed=0)
    matrix, _ = warp.draw_affine(n)
    s = torch.tensor(spacing, dtype=torch.float64)
    singular = torch.linalg.svdvals(torch.diag(s) @ matrix @ torch.diag(1 / s))
    ratio = singular[:, 0] / singular[:, 2]
    return float(ratio.median()), float(ratio.quantile(0.9)), float(ratio.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=20000, help="warps drawn per spacing. Default: 20000")
    args = parser.parse_args()
    print("| spacing (mm) | voxel rotations: median / p90 / worst | physical rotations: worst |")
    print("|---|---|---|")
    for spacing in SPACINGS:
        median, p90, worst = stretch(spacing, physical=False, n=args.draws)
        print(f"| {' × '.join(str(v) for v in spacing)} | {median:.2f} / {p90:.2f} / {worst:.2f} | "
              f"{stretch(spacing, physical=True, n=args.draws)[2]:.2f} |")


if __name__ == "__main__":
    main()
