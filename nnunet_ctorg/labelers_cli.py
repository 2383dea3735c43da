"""``nnunet_ctorg_label_lungs`` / ``nnunet_ctorg_label_bones``: label a folder of CTs by morphology."""

import argparse
import sys
from functools import partial
from pathlib import Path


def label_file(src: Path, dst: Path, organ: str, mode: str) -> None:
    """Label one CT file and write the binary mask (uint8, the CT's geometry) atomically."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ctorg.io import read_ct, write_image_atomic
    from nnunet_ctorg.labelers import label_bones, label_lungs

    image = read_ct(src, src.name)
    if abs(image.GetDirection()[8]) < 0.9:
        raise ValueError(f"{src.name}: the third image axis is not cranio-caudal (direction "
                         f"{np.round(image.GetDirection(), 2)}): axial slices cannot be identified")
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = image.GetSpacing()[::-1]
    labeler = label_lungs if organ == "lungs" else label_bones
    mask = sitk.GetImageFromArray(labeler(hu, spacing, mode).astype(np.uint8))
    mask.CopyInformation(image)
    write_image_atomic(mask, dst)


def _work(item: tuple[Path, Path], organ: str, mode: str) -> tuple[str, str | None]:
    src, dst = item
    try:
        label_file(src, dst, organ, mode)
    except (ValueError, OSError) as e:
        return src.name, str(e)
    return src.name, None


def label_folder(in_dir: str | Path, out_dir: str | Path, organ: str, mode: str = "paper", num_processes: int = 1,
                 progress: bool = True) -> dict:
    """Label every CT of ``in_dir`` into ``out_dir`` (same file names); finished files are skipped."""
    from nnunet_ctorg.io import IMAGE_ENDINGS, case_name, list_images
    from nnunet_ctorg.labelers import MODES
    from nnunet_ctorg.parallel import map_with_progress

    if organ not in ("lungs", "bones"):
        raise ValueError(f"organ must be 'lungs' or 'bones', got {organ!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = list_images(in_dir)
    if not files:
        raise ValueError(f"no CT files ({', '.join(IMAGE_ENDINGS)}) in {in_dir}")
    items = [(p, out_dir / f"{case_name(p)}.nii.gz") for p in files]
    todo = [i for i in items if not i[1].is_file()]
    summary = {"written": [], "skipped": [s.name for s, d in items if d.is_file()], "failed": {}}
    work = partial(_work, organ=organ, mode=mode)
    for name, error in map_with_progress(work, todo, num_processes, f"{organ} ({mode})", "CT", progress):
        if error is None:
            summary["written"].append(name)
        else:
            summary["failed"][name] = error
    return summary


def _main(organ: str) -> None:
    prog = f"nnunet_ctorg_label_{organ}"
    steps = ("air < -150 HU, closing with a 1 x 10/d x 1 bar, removal of air touching a slice border, opening "
             "with a 1 cm ball, the two largest components, reconstruction" if organ == "lungs" else
             "> 200 HU, the largest component, closing with a 2.5 cm ball, > 0 HU, holes filled per slice")
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Label the {organ} of every CT in a folder with the unsupervised morphology of "
                               f"CT-ORG (Rister et al.): {steps}. NIfTI/NRRD/MHA in, binary NIfTI masks with the "
                               f"input's geometry out. Re-running skips finished files.")
    parser.add_argument("-i", required=True, help="folder of CTs in HU")
    parser.add_argument("-o", required=True, help="output folder for the masks (same names, .nii.gz)")
    parser.add_argument("--mode", choices=["paper", "improved"], default="paper",
                        help="'paper': the published steps; 'improved': fixes their failure modes (lungs: air inside "
                             "the body that is not gas; bones: every cortex-bright component inside the body). "
                             "Default: paper")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes. Default: 1")
    args = parser.parse_args()
    try:
        summary = label_folder(args.i, args.o, organ, args.mode, args.np)
    except (ValueError, OSError) as e:
        sys.exit(f"{prog}: error: {e}")
    print(f"{len(summary['written'])} written, {len(summary['skipped'])} already there, "
          f"{len(summary['failed'])} failed -> {args.o}")
    for name, error in summary["failed"].items():
        print(f"  failed {name}: {error}")
    if summary["failed"]:
        sys.exit(1)


def lungs_main() -> None:
    _main("lungs")


def bones_main() -> None:
    _main("bones")
