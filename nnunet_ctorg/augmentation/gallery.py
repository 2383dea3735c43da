"""Picture of what the device augmentation does: one CT slice, eight random augmentations, their labels.

    python -m nnunet_ctorg.augmentation.gallery --ct CT.nii.gz --seg SEG.nii.gz -o augmentation_examples.png

The picture of docs/augmentation.md is made from the real CT in ``tests/data/real_ct``. Every example is warped
(rotation and scaling forced on) and the other operations are drawn with probability 0.5, so the
eight panels show more variation than one training batch with the trainer's probabilities would.
"""

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", required=True, type=Path, help="CT image in HU (any SimpleITK format)")
    parser.add_argument("--seg", required=True, type=Path, help="label image on the CT's grid")
    parser.add_argument("-o", "--output", required=True, type=Path, help="PNG to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation (default 0)")
    parser.add_argument("--slice", type=int, default=None, help="axial slice to show (default: the middle one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import SimpleITK as sitk
    import torch

    from nnunet_ctorg.augmentation import AugmentationParameters, build_device_augmentation
    from nnunet_ctorg.evaluation.previews import label_colours
    from nnunet_ctorg.io import atomic_path

    for path in (args.ct, args.seg):
        if not path.is_file():
            sys.exit(f"error: {path} not found")
    ct_image, seg_image = sitk.ReadImage(str(args.ct)), sitk.ReadImage(str(args.seg))
    if ct_image.GetSize() != seg_image.GetSize():
        sys.exit(f"error: {args.seg} has size {seg_image.GetSize()}, the CT {ct_image.GetSize()}")
    # LPS: axial slices in radiological display (anterior up, the patient's left on the right)
    ct_image, seg_image = sitk.DICOMOrient(ct_image, "LPS"), sitk.DICOMOrient(seg_image, "LPS")
    ct = sitk.GetArrayFromImage(ct_image).astype(np.float32)
    seg = sitk.GetArrayFromImage(seg_image).astype(np.int16)
    mean, std, lower = float(ct[seg > 0].mean()), float(ct[seg > 0].std()), float(np.percentile(ct[seg > 0], 0.5))
    z = args.slice if args.slice is not None else ct.shape[0] // 2

    probabilities = {name: 0.5 for name in vars(AugmentationParameters()) if name.startswith("p_")}
    parameters = AugmentationParameters(**{**probabilities, "p_rotation": 1.0, "p_scaling": 1.0})
    pipeline = build_device_augmentation(parameters, ct.shape, [(mean, std, lower)], seed=args.seed)
    n = 8
    image = torch.from_numpy((np.maximum(ct, lower) - mean) / std)[None, None].repeat(n, 1, 1, 1, 1)
    labels = torch.from_numpy(seg)[None, None].repeat(n, 1, 1, 1, 1)
    out, target = pipeline(image, labels)
    hu = (out[:, 0] * std + mean).numpy()

    colours = label_colours(int(seg.max()))
    fig, axes = plt.subplots(3, 3, figsize=(10, 9))
    panels = [((np.maximum(ct, lower))[z], seg[z], "original")] + [
        (hu[i, z], target[i, 0, z].numpy(), f"augmentation {i + 1}") for i in range(n)]
    for ax, (slice_hu, slice_seg, title) in zip(axes.flat, panels):
        ax.imshow(slice_hu, cmap="gray", vmin=-400, vmax=400)
        overlay = np.zeros((*slice_seg.shape, 4))
        present = slice_seg > 0
        overlay[present, :3] = colours[slice_seg[present]]
        overlay[..., 3] = 0.35 * present
        ax.imshow(overlay)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"CTOrgIOUTrainer's device augmentation on a real CT (axial slice {z}, labels overlaid)\n"
                 "warp in every example, other operations with p = 0.5 (training uses AugmentationParameters)",
                 fontsize=10)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.output) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
