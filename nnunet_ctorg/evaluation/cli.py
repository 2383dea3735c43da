"""Console scripts: ``nnunet_ctorg_evaluate``, ``nnunet_ctorg_statistics`` and ``nnunet_ctorg_preview``."""

import argparse
import sys
from pathlib import Path

DJFILE_HELP = ("dataset.json or {{id: name}} JSON with the label names; default: dataset.json in {where}, else the "
               "label ids found in the files (the default scheme's names when they fit it, else label_<id>; said in "
               "one line)")


def _organ_tolerance(text: str) -> tuple[str, float]:
    organ, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return organ, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ORGAN=MM, got {text!r}") from None


def evaluate_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnunet_ctorg_evaluate",
        description="Compare a folder of predicted segmentations with a folder of reference segmentations (or "
                    "a second prediction folder), paired by file name. Per case and organ: Dice (DSC), IoU, "
                    "normalised surface Dice (NSD) at a tolerance in mm, HD95, mean symmetric surface distance "
                    "(ASSD) and volume difference in ml, all spacing-aware. Writes metrics_per_case.csv, "
                    "summary.json and summary.md (mean ± sd per organ). Both masks empty: DSC = NSD = 1; one "
                    "empty: DSC = NSD = 0 and the distances undefined.")
    parser.add_argument("-ref", required=True, help="folder of reference segmentations (e.g. labelsTs)")
    parser.add_argument("-pred", required=True, help="folder of predicted segmentations (same file names)")
    parser.add_argument("-o", required=True, help="output folder for the CSV, JSON and markdown summaries")
    parser.add_argument("-djfile", default=None,
                        help="dataset.json (or {id: name} JSON) with the label map; default: dataset.json in "
                             "-pred, in -ref or next to -ref, else the label ids found in the files (the default "
                             "scheme's names when they fit it, else label_<id>; said in one line)")
    parser.add_argument("--organs", nargs="+", default=None, help="organs to evaluate (default: all labels)")
    parser.add_argument("--tolerance_mm", type=float, default=2.0, help="NSD tolerance in mm (default 2)")
    parser.add_argument("--organ_tolerance", nargs="+", type=_organ_tolerance, default=[], metavar="ORGAN=MM",
                        help="per-organ NSD tolerance overriding --tolerance_mm, e.g. bone=1 liver=3")
    parser.add_argument("-np", type=int, default=1, help="cases evaluated in parallel processes (default 1)")
    parser.add_argument("--previews", default=None, metavar="CT_DIR",
                        help="also write previews/CASE.png (reference above prediction) using the CTs in CT_DIR "
                             "(CASE_0000.nii.gz or CASE.nii.gz)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from nnunet_ctorg.evaluation.evaluate import SUMMARY_MD, evaluate_folders
    from nnunet_ctorg.io import load_label_map

    try:
        labels = load_label_map(args.djfile) if args.djfile else None
        evaluate_folders(args.ref, args.pred, args.o, labels=labels, organs=args.organs,
                         tolerance_mm=args.tolerance_mm, organ_tolerances=dict(args.organ_tolerance),
                         num_processes=args.np, preview_ct_dir=args.previews, progress=not args.quiet)
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_evaluate: error: {e}")
    print((Path(args.o) / SUMMARY_MD).read_text())


def statistics_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnunet_ctorg_statistics",
        description="Per organ volume (ml) and mean/median HU of a segmented CT, written as JSON "
                    "(like TotalSegmentator's --statistics).")
    parser.add_argument("-i", required=True, help="CT image (NIfTI/NRRD/MHA, HU)")
    parser.add_argument("-s", required=True, help="segmentation of the CT (same geometry)")
    parser.add_argument("-o", required=True, help="output JSON file")
    parser.add_argument("-djfile", default=None, help=DJFILE_HELP.format(where="the segmentation's folder"))
    args = parser.parse_args(argv)

    import json

    from nnunet_ctorg.evaluation.statistics import statistics_of_files
    from nnunet_ctorg.io import resolve_label_map, write_text_atomic

    try:
        seg = Path(args.s)
        labels = resolve_label_map(args.djfile, [seg.parent / "dataset.json"], [seg], "the segmentation")
        stats = statistics_of_files(args.i, args.s, labels)
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_statistics: error: {e}")
    write_text_atomic(json.dumps(stats, indent=2), args.o)


def preview_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnunet_ctorg_preview",
        description="Write CASE.png with axial, coronal and sagittal slices of each CT and its coloured labels.")
    parser.add_argument("-i", required=True, help="folder of CTs (CASE_0000.nii.gz or CASE.nii.gz)")
    parser.add_argument("-s", required=True, help="folder of segmentations (CASE.nii.gz)")
    parser.add_argument("-o", required=True, help="output folder for the PNGs")
    parser.add_argument("-djfile", default=None, help=DJFILE_HELP.format(where="-s"))
    parser.add_argument("-ref", default=None, help="optional folder of reference segmentations, drawn above")
    parser.add_argument("-np", type=int, default=1, help="parallel processes (default 1)")
    args = parser.parse_args(argv)

    from nnunet_ctorg.evaluation.previews import preview_folder
    from nnunet_ctorg.io import list_images, resolve_label_map

    try:
        files = list_images(args.s, "segmentation folder") + (list_images(args.ref, "reference folder") if args.ref
                                                               else [])
        labels = resolve_label_map(args.djfile, [Path(args.s) / "dataset.json"], files, "the segmentations")
        preview_folder(args.i, args.s, args.o, labels, ref_dir=args.ref, num_processes=args.np,
                       seg_name="segmentation")
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_preview: error: {e}")
