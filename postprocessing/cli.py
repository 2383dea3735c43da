"""``nnunet_ctorg_postprocess``: organ-aware cleanup of a folder of predicted segmentations."""

import argparse
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path


def postprocess_file(src: Path, dst: Path, labels: Mapping[str, int], rules: Mapping) -> None:
    """Clean one segmentation file and write it (same geometry, same pixel type) atomically."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ctorg.evaluation.evaluate import read_label_array
    from nnunet_ctorg.io import case_name, write_image_atomic
    from nnunet_ctorg.postprocessing.organ_cleanup import clean_segmentation

    case = case_name(src)
    image, seg = read_label_array(src, f"{case}: segmentation")
    unknown = sorted(set(np.unique(seg).tolist()) - set(labels.values()))
    if unknown:
        raise ValueError(f"{case}: label values {unknown} are not in the label map")
    cleaned = sitk.GetImageFromArray(clean_segmentation(seg, image.GetSpacing(), labels, rules))
    cleaned.CopyInformation(image)
    write_image_atomic(sitk.Cast(cleaned, image.GetPixelID()), dst)


def _work(item: tuple[Path, Path], labels: Mapping[str, int], rules: Mapping) -> tuple[str, str | None]:
    try:
        postprocess_file(item[0], item[1], labels, rules)
    except (ValueError, OSError) as e:
        return item[0].name, str(e)
    return item[0].name, None


def postprocess_folder(in_dir: str | Path, out_dir: str | Path, labels: Mapping[str, int],
                       rule_overrides: Mapping[str, Mapping] | None = None, num_processes: int = 1,
                       overwrite: bool = False, progress: bool = True) -> dict:
    """Clean every segmentation of ``in_dir`` into ``out_dir``; existing outputs are skipped unless ``overwrite``."""
    from nnunet_ctorg.io import list_images
    from nnunet_ctorg.parallel import map_with_progress
    from nnunet_ctorg.postprocessing.organ_cleanup import rules_for_labels

    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if in_dir.resolve() == out_dir.resolve():
        raise ValueError(f"output folder must differ from the input folder {in_dir} (the input is kept)")
    rules = rules_for_labels(labels, rule_overrides)
    files = list_images(in_dir)
    if not files:
        raise ValueError(f"no segmentation files in {in_dir}")
    items = [(p, out_dir / p.name) for p in files]
    todo = [i for i in items if overwrite or not i[1].is_file()]
    summary = {"written": [], "skipped": [s.name for s, d in items if (s, d) not in todo], "failed": {}}
    work = partial(_work, labels=dict(labels), rules=rules)
    for name, error in map_with_progress(work, todo, num_processes, "postprocess", "case", progress):
        if error is None:
            summary["written"].append(name)
        else:
            summary["failed"][name] = error
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="nnunet_ctorg_postprocess",
        description="Organ-aware cleanup of predicted segmentations: keep the largest component(s) of organs "
                    "such as liver, spleen, bladder, pancreas, brain (one) and lungs, kidneys (two), remove bone "
                    "islands below 100 mm³, fill enclosed holes per organ. Rules follow the organ names of the "
                    "label map (see nnunet_ctorg.postprocessing.organ_cleanup). Re-running skips finished files.")
    parser.add_argument("-i", required=True, help="folder of segmentations (NIfTI/NRRD/MHA)")
    parser.add_argument("-o", required=True, help="output folder (must differ from -i)")
    parser.add_argument("-djfile", default=None,
                        help="dataset.json or {id: name} JSON with the organ names; default: dataset.json in -i "
                             "(nnUNetv2_predict writes one), else the label ids found in the files (the default "
                             "scheme's names when they fit it, else label_<id>, which get the generic rule; said in "
                             "one line)")
    parser.add_argument("--rules", default=None,
                        help='JSON overriding rules per organ, e.g. {"bone": {"min_island_mm3": 50}}')
    parser.add_argument("-np", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="redo files that exist in -o")
    args = parser.parse_args(argv)

    from nnunet_ctorg.io import list_images, resolve_label_map
    from nnunet_ctorg.postprocessing.organ_cleanup import load_rule_overrides

    try:
        overrides = load_rule_overrides(args.rules) if args.rules else None
        labels = resolve_label_map(args.djfile, [Path(args.i) / "dataset.json"], list_images(args.i),
                                   "the segmentations")
        summary = postprocess_folder(args.i, args.o, labels, overrides, args.np, args.overwrite)
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_postprocess: error: {e}")
    print(f"{len(summary['written'])} written, {len(summary['skipped'])} skipped, {len(summary['failed'])} failed")
    for name, error in summary["failed"].items():
        print(f"  {name}: {error}", file=sys.stderr)
    if summary["failed"]:
        sys.exit(1)
