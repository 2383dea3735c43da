"""Lung and bone labelers on the real CT of tests/data/real_ct, both modes.

Prints the Dice against the TotalSegmentator reference on example_ct_sm (lungs = the five lobes,
bone = the scheme's bone structures), counts labelled voxels outside the body on example_ct (with
its exam table) and saves a PNG overlay (axial, coronal, sagittal) of example_ct's masks.

    python benchmarks/labelers_real_ct.py [--data tests/data/real_ct] [-o labelers_real_ct.png]
"""

import argparse
import json
from pathlib import Path


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ctorg.body import body_mask
    from nnunet_ctorg.label_scheme import LabelScheme
    from nnunet_ctorg.labelers import label_bones, label_lungs

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "tests/data/real_ct")
    parser.add_argument("-o", type=Path, default=Path("labelers_real_ct.png"), help="PNG overlay to write")
    args = parser.parse_args()

    def load(name):
        image = sitk.ReadImage(str(args.data / name))
        return sitk.GetArrayFromImage(image).astype(np.float32), image.GetSpacing()[::-1]

    hu, spacing = load("example_ct_sm.nii.gz")
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(args.data / "example_seg.nii.gz")))
    names = json.loads((args.data / "example_seg_labels.json").read_text())
    scheme = LabelScheme.load(None)

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    for organ, labeler in (("lungs", label_lungs), ("bone", label_bones)):
        ref = np.isin(seg, [int(i) for i, n in names.items() if n in scheme.totalseg_structures(organ)])
        scores = {mode: dice(labeler(hu, spacing, mode), ref) for mode in ("paper", "improved")}
        print(f"example_ct_sm {organ}: Dice paper {scores['paper']:.3f}, improved {scores['improved']:.3f} "
              f"(reference {int(ref.sum())} voxels)")

    hu, spacing = load("example_ct.nii.gz")
    body = body_mask(hu)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for row, mode in enumerate(("paper", "improved")):
        lungs, bones = label_lungs(hu, spacing, mode), label_bones(hu, spacing, mode)
        print(f"example_ct ({mode}): lungs {int(lungs.sum())}, bone {int(bones.sum())} voxels; outside the body "
              f"(table, air): lungs {int((lungs & ~body).sum())}, bone {int((bones & ~body).sum())}")
        overlay = np.zeros(hu.shape, np.uint8)
        overlay[lungs], overlay[bones] = 1, 2
        z, y, x = (int(np.median(np.nonzero(lungs | bones)[i])) for i in range(3))
        for ax, (image, mask, aspect) in zip(axes[row], ((hu[z], overlay[z], 1.0),
                                                          (hu[:, y], overlay[:, y], spacing[0] / spacing[2]),
                                                          (hu[:, :, x], overlay[:, :, x], spacing[0] / spacing[1]))):
            ax.imshow(image, cmap="gray", vmin=-1000, vmax=1000, aspect=aspect, origin="lower")
            ax.imshow(np.ma.masked_equal(mask, 0), cmap="autumn", alpha=0.5, vmin=1, vmax=2, aspect=aspect,
                      origin="lower", interpolation="nearest")
            ax.set_axis_off()
        axes[row, 0].set_title(f"{mode}: lungs (red), bone (yellow)")
    fig.tight_layout()
    fig.savefig(args.o, dpi=80)
    print(f"overlay: {args.o}")


if __name__ == "__main__":
    main()
