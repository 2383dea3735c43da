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
    parser.add_argument("--keep_known_bad", action="store_true",
                        help="also convert the cases that the known-bad-case table says to leave out (they are "
                             "then flagged with the reason in their record and the summary)")
    parser.add_argument("--known_bad", default=None, metavar="FILE",
                        help="known-bad-case table to use instead of the shipped "
                             "nnunet_ctorg/dataset_conversion/known_bad_cases.json (same format)")
    return parser


def _run(prog: str, convert, args, **kwargs) -> None:
    from nnunet_ctorg.dataset_conversion.common import raw_root
    from nnunet_ctorg.label_scheme import LabelScheme

    try:
        scheme = LabelScheme.load(args.scheme)
        out = convert(args.source, raw_root(args.o), args.d, args.name, scheme=scheme, num_processes=args.np,
                      strict=args.strict, progress=True, keep_known_bad=args.keep_known_bad,
                      known_bad=args.known_bad, **kwargs)
    except (ValueError, OSError) as e:
        sys.exit(f"{prog}: error: {e}")
    print(f"nnU-Net dataset: {out}")


def convert_ctorg_main() -> None:
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset

    parser = _parser("Convert CT-ORG (volume-N.nii.gz, labels-N.nii.gz) into an nnU-Net raw dataset with the "
                     "unified label scheme. Cases 0-20 become the test set (imagesTs). Re-running skips "
                     "finished cases; exits non-zero when no case is converted.",
                     "CT-ORG folder: the one with volume-N.nii.gz and labels-N.nii.gz or any folder above it "
                     "(TCIA's download: the folder holding OrganSegmentations/)", "CTORG")
    args = parser.parse_args()
    _run("nnunet_ctorg_convert_ctorg", convert_ctorg_dataset, args)


def convert_totalsegmentator_main() -> None:
    from nnunet_ctorg.dataset_conversion.totalsegmentator import convert_totalseg_dataset

    parser = _parser("Convert TotalSegmentator v1/v2 (meta.csv, <id>/ct.nii.gz, <id>/segmentations/*.nii.gz) "
                     "into an nnU-Net raw dataset with the unified label scheme. train/val become a fixed "
                     "splits_final.json in $nnUNet_preprocessed, test becomes imagesTs. Re-running skips "
                     "finished cases; exits non-zero when no case is converted.",
                     "TotalSegmentator folder with meta.csv, or the folder the zip was unpacked into",
                     "TotalSegmentator")
    parser.add_argument("--version", choices=["auto", "v1", "v2"], default="auto",
                        help="structure set of the download (v1: 104 structures, v2: 117); auto tells them apart "
                             "by the mask files present. Default: auto")
    args = parser.parse_args()
    _run("nnunet_ctorg_convert_totalsegmentator", convert_totalseg_dataset, args, version=args.version)


def convert_abdomenct1k_main() -> None:
    from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset

    parser = _parser("Convert AbdomenCT-1K (Case_XXXXX_0000.nii.gz images in any part folders, "
                     "Case_XXXXX.nii.gz masks) into an nnU-Net raw dataset with the unified label scheme. Images "
                     "without a mask are listed in the summary, not converted. Re-running skips finished cases; "
                     "exits non-zero when no case is converted.",
                     "AbdomenCT-1K folder (ImagePart1..3 and Mask below it)", "AbdomenCT1K")
    args = parser.parse_args()
    _run("nnunet_ctorg_convert_abdomenct1k", convert_abdomenct1k_dataset, args)


def merge_main() -> None:
    from nnunet_ctorg.dataset_conversion.common import raw_root
    from nnunet_ctorg.dataset_conversion.merge import (
        DUPLICATE_ACTIONS,
        DUPLICATE_PRIORITY,
        UNANNOTATED_STRATEGIES,
        merge_datasets,
    )

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
                             "organs, and on the unlabelled bone-like voxels of a case whose source annotates bone "
                             "only in part (TotalSegmentator, CT-ORG training cases); outside air stays "
                             "background) or 'pseudo' (filled by --teacher models, as "
                             "nnunet_ctorg_complete_dataset does). Default: ignore")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes. Default: 1")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad case")
    parser.add_argument("--duplicates", choices=list(DUPLICATE_ACTIONS), default="union",
                        help="what becomes of the copies of one scan in the inputs (found by their fingerprints, "
                             "confirmed on the voxels; nnunet_ctorg_find_duplicates lists them): 'union' keeps one "
                             "case with the annotations of all copies mapped onto its grid, 'same_fold' keeps every "
                             "copy, all in one fold, 'drop' keeps only the copy with the most voxels. Copies whose "
                             "shared organ disagrees (Dice < 0.8) are never merged: kept in one fold and flagged. "
                             "Default: union")
    parser.add_argument("--duplicate_priority", nargs="+", default=list(DUPLICATE_PRIORITY), metavar="SOURCE",
                        help="which source's annotation wins an organ that two copies both annotate, first wins. "
                             f"Default: {' '.join(DUPLICATE_PRIORITY)}")
    _completion_flags(parser, required=False)
    args = parser.parse_args()
    try:
        teachers = _teachers(args) if args.teacher else None
        out = merge_datasets(args.i, raw_root(args.o), args.d, args.name, args.unannotated, args.np, args.strict,
                             progress=True, teachers=teachers, duplicates=args.duplicates,
                             duplicate_priority=tuple(args.duplicate_priority), **_completion_options(args))
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_merge_datasets: error: {e}")
    print(f"nnU-Net dataset: {out}")


def _completion_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--teacher", action="append", required=required, metavar="NAME=SOURCE[:organ,...]",
                        help="a pseudo-label teacher (repeatable): SOURCE is an nnU-Net model folder (its labels "
                             "are matched to the scheme by name; folds: all that have a checkpoint_final.pth) or "
                             "'lungs'/'bones' (the morphology labelers); ':organ,...' restricts what it may fill")
    parser.add_argument("--priority", action="append", default=[], metavar="TEACHER:ORGAN=VALUE",
                        help="override a teacher's priority for an organ (default: its nnU-Net validation Dice; "
                             "morphology: lungs 0.978, bone 0.932 from paper 003). Higher wins where proposals "
                             "overlap (repeatable)")
    parser.add_argument("--confidence", type=float, default=None,
                        help="winning pseudo labels whose teacher probability is below this become the ignore "
                             "label (0-1). Default: off")
    parser.add_argument("-device", default="cpu", choices=["cpu", "cuda", "mps"], help="teacher device. Default: cpu")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")


def _teachers(args) -> list:
    from nnunet_ctorg.dataset_conversion.completion import parse_teacher

    teachers = {t.name: t for t in (parse_teacher(spec) for spec in args.teacher)}
    for item in args.priority:
        key, _, value = item.partition("=")
        teacher, _, organ = key.partition(":")
        if teacher not in teachers or not organ:
            raise ValueError(f"--priority {item!r}: expected TEACHER:ORGAN=VALUE with a teacher among "
                             f"{sorted(teachers)}")
        try:
            teachers[teacher].priority[organ] = float(value)
        except ValueError:
            raise ValueError(f"--priority {item!r}: {value!r} is not a number") from None
    return list(teachers.values())


def _completion_options(args) -> dict:
    return {"confidence": args.confidence, "device": args.device, "use_mirroring": not args.disable_tta}


def complete_main() -> None:
    from nnunet_ctorg.dataset_conversion.common import raw_root
    from nnunet_ctorg.dataset_conversion.completion import complete_dataset

    parser = argparse.ArgumentParser(
        description="Complete a merged nnU-Net dataset with pseudo labels: teachers predict only the organs a case's "
                    "source does not annotate; real annotations always win; overlapping proposals go to the teacher "
                    "with the higher priority (validation Dice); provenance is written to the annotation records. "
                    "Re-run on the output with the student as a new teacher for noisy-student rounds.")
    parser.add_argument("-i", type=int, required=True, help="id of the merged dataset (nnunet_ctorg_merge_datasets)")
    parser.add_argument("-d", type=int, required=True, help="nnU-Net dataset id of the output (1-999)")
    parser.add_argument("-n", "--name", default="Completed", help="dataset name. Default: Completed")
    parser.add_argument("-o", default=None, help="nnU-Net raw folder (input and output). Default: $nnUNet_raw")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (sharding, "
                        "as nnUNetv2_predict). Default: 1")
    parser.add_argument("-part_id", type=int, default=0, help="which part this process does (0-based). Default: 0")
    parser.add_argument("--no_continue", action="store_true", help="redo cases already completed in the output "
                        "(default: skip them, so an interrupted run resumes)")
    _completion_flags(parser, required=True)
    args = parser.parse_args()
    try:
        out = complete_dataset(args.i, raw_root(args.o), args.d, _teachers(args), args.name,
                               num_parts=args.num_parts, part_id=args.part_id, resume=not args.no_continue,
                               **_completion_options(args))
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_complete_dataset: error: {e}")
    print(f"nnU-Net dataset: {out}")


def find_duplicates_main() -> None:
    from nnunet_ctorg.dataset_conversion.common import raw_root

    parser = argparse.ArgumentParser(
        description="List the copies of one scan among converted datasets (and within one): another file name, "
                    "header, axis order or flips, int16 or float storage, an intensity offset, fewer slices. "
                    "Candidates come from the fingerprints written at conversion (computed and stored for older "
                    "datasets) and are confirmed on the voxels. Also says whether the duplicates the datasets' "
                    "documentation names (the known-bad table's same-fold groups) were found.")
    parser.add_argument("-i", nargs="+", required=True, metavar="DATASET",
                        help="datasets to compare: nnU-Net dataset ids (in the raw folder) or dataset folders")
    parser.add_argument("-o", default=None, help="nnU-Net raw folder of the ids. Default: $nnUNet_raw")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the evidence (mappings, offsets, overlaps, unconfirmed candidates) here")
    args = parser.parse_args()
    try:
        found = _find_duplicates(args.i, args.o, args.json, raw_root)
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_find_duplicates: error: {e}")
    print(found)


def _find_duplicates(inputs: list[str], raw_dir: str | None, json_file: str | None, raw_root) -> str:
    import json
    from pathlib import Path

    from nnunet_ctorg.dataset_conversion.duplicates import (
        converted_cases,
        describe,
        documented_groups,
        duplicate_report,
        find_duplicates,
    )
    from nnunet_ctorg.dataset_conversion.merge import find_dataset
    from nnunet_ctorg.io import write_text_atomic

    datasets = []
    for item in inputs:
        if item.isdigit():
            datasets.append(find_dataset(raw_root(raw_dir), int(item)))
        elif Path(item).is_dir():
            datasets.append(Path(item))
        else:
            raise FileNotFoundError(f"{item!r} is neither a dataset id nor a folder")
    cases = [c for ds in datasets for c in converted_cases(ds)]
    if not cases:
        raise ValueError(f"no case (images*/CASE_0000.nii.gz) in {[str(d) for d in datasets]}")
    confirmed, rejected = find_duplicates(cases, progress=True)
    documented = documented_groups(cases)
    report = duplicate_report(confirmed, rejected, documented)
    lines = [describe(d) for d in confirmed]
    for group in report["documented_groups"]:
        lines.append(f"documented ({group['reference']}): {group['group']}: {', '.join(group['cases'])} -> "
                     f"{'found' if group['found'] else 'NOT found by the fingerprints'}")
    lines.append(f"{len(confirmed)} pair(s) of one scan among {len(cases)} case(s) of {len(datasets)} dataset(s); "
                 f"{len(rejected)} candidate(s) not confirmed on the voxels")
    if json_file:
        write_text_atomic(json.dumps(report, indent=1), json_file)
        lines.append(f"evidence: {json_file}")
    return "\n".join(lines)
