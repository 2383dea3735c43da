"""Console commands of the dataset converters and of the merge (nnU-Net-style flags)."""

import argparse
import sys


def _parser(description: str, source_help: str, default_name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("source", metavar="SOURCE_DIR", help=source_help)
    parser.add_argument("-d", type=int, required=True, help="nnU-Net dataset id of the output (1-999)")
    parser.add_argument("-n", "--name", default=default_name,
                        help=f"dataset name: the output is DatasetXXX_NAME. Default: {default_name}")
    parser.add_argument("-o", default=None, help="nnU-Net raw folder to write to. Default: $nnUNet_raw")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes. Default: 1")
    parser.add_argument("--scheme", default=None,
                        help="label scheme JSON file (see nnunet_ctorg.label_scheme). Default: the built-in "
                             "scheme 0 background, 1 liver, 2 bladder, 3 lungs, 4 kidneys, 5 bone, 6 brain, "
                             "7 spleen, 8 pancreas")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad case instead of skipping it and reporting it at the end")
    return parser


def _run(prog: str, convert, args, **kwargs) -> None:
    from nnunet_ctorg.dataset_conversion.common import raw_root
    from nnunet_ctorg.label_scheme import LabelScheme

    try:
        scheme = LabelScheme.load(args.scheme)
        out = convert(args.source, raw_root(args.o), args.d, args.name, scheme=scheme, num_processes=args.np,
                      strict=args.strict, progress=True, **kwargs)
    except (ValueError, OSError) as e:
        sys.exit(f"{prog}: error: {e}")
    print(f"nnU-Net dataset: {out}")


def convert_ctorg_main() -> None:
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset

    parser = _parser("Convert CT-ORG (volume-N.nii.gz, labels-N.nii.gz) into an nnU-Net raw dataset with the "
                     "unified label scheme. Cases 0-20 become the test set (imagesTs). Re-running skips "
                     "finished cases.", "CT-ORG folder with volume-N.nii.gz and labels-N.nii.gz", "CTORG")
    args = parser.parse_args()
    _run("nnunet_ctorg_convert_ctorg", convert_ctorg_dataset, args)


def convert_totalsegmentator_main() -> None:
    from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset

    parser = _parser("Convert TotalSegmentator v1/v2 (meta.csv, <id>/ct.nii.gz, <id>/segmentations/*.nii.gz) "
                     "into an nnU-Net raw dataset with the unified label scheme. train/val become a fixed "
                     "splits_final.json in $nnUNet_preprocessed, test becomes imagesTs. Re-running skips "
                     "finished cases.", "TotalSegmentator folder with meta.csv", "TotalSegmentator")
    parser.add_argument("--version", choices=["auto", "v1", "v2"], default="auto",
                        help="structure set of the download; auto looks for v2-only masks. Default: auto")
    args = parser.parse_args()
    _run("nnunet_ctorg_convert_totalsegmentator", convert_totalseg_dataset, args, version=args.version)


def convert_abdomenct1k_main() -> None:
    from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset

    parser = _parser("Convert AbdomenCT-1K (Case_XXXXX_0000.nii.gz images in any part folders, "
                     "Case_XXXXX.nii.gz masks) into an nnU-Net raw dataset with the unified label scheme. "
                     "Re-running skips finished cases.", "AbdomenCT-1K folder (image part folders and Mask)",
                     "AbdomenCT1K")
    args = parser.parse_args()
    _run("nnunet_ctorg_convert_abdomenct1k", convert_abdomenct1k_dataset, args)


def merge_main() -> None:
    from nnunet_ctorg.dataset_conversion.common import raw_root
    from nnunet_ctorg.dataset_conversion.merge import UNANNOTATED_STRATEGIES, merge_datasets

    parser = argparse.ArgumentParser(
        description="Merge converted nnU-Net datasets (same label scheme) into one. Cases keep their "
                    "source-prefixed names, fixed splits are kept, and organs a source does not annotate "
                    "are handled by --unannotated. Re-running skips finished cases.")
    parser.add_argument("-i", type=int, nargs="+", required=True, help="ids of the datasets to merge")
    parser.add_argument("-d", type=int, required=True, help="nnU-Net dataset id of the output (1-999)")
    parser.add_argument("-n", "--name", default="Merged", help="dataset name. Default: Merged")
    parser.add_argument("-o", default=None, help="nnU-Net raw folder (inputs and output). Default: $nnUNet_raw")
    parser.add_argument("--unannotated", choices=sorted(UNANNOTATED_STRATEGIES), default="ignore",
                        help="what unannotated organs become: 'background' (naive), 'ignore' (nnU-Net's ignore "
                             "label on the unlabelled voxels inside the body of a case whose source lacks some "
                             "organs; outside air stays background) or 'pseudo' (teacher predictions; see the "
                             "pseudo-label command). Default: ignore")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes. Default: 1")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad case")
    args = parser.parse_args()
    try:
        out = merge_datasets(args.i, raw_root(args.o), args.d, args.name, args.unannotated, args.np, args.strict,
                             progress=True)
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_merge_datasets: error: {e}")
    print(f"nnU-Net dataset: {out}")
