"""``nnunet_ctorg_phantoms``: write a synthetic CT dataset in a public dataset's layout."""

import argparse
import sys


def generate_dataset(layout: str, out_dir: str, n_cases: int, fov: str, spacing: tuple[float, float, float],
                     seed: int = 0, first_id: int = 0, version: str = "v2", table: bool = True,
                     num_processes: int = 1, progress: bool = True, quirks: bool = False) -> dict[str, int]:
    """Write ``n_cases`` phantoms; cases already on disk are skipped. Returns counts.

    ``quirks``: also write what the real downloads have (``nnunet_ctorg.phantoms.layouts``): CT-ORG in
    ``OUT/OrganSegmentations``, sheared NIfTI headers, an AbdomenCT-1K image without a mask.
    """
    from functools import partial
    from pathlib import Path

    from nnunet_ctorg.parallel import map_with_progress
    from nnunet_ctorg.phantoms.anatomy import FIELDS_OF_VIEW
    from nnunet_ctorg.phantoms.layouts import LAYOUTS, PhantomSettings, case_is_written, finish_dataset, write_case

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if fov not in FIELDS_OF_VIEW:
        raise ValueError(f"fov must be one of {sorted(FIELDS_OF_VIEW)}, got {fov!r}")
    if n_cases < 1:
        raise ValueError(f"number of cases must be >= 1, got {n_cases}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive numbers (x y z, mm), got {spacing!r}")
    settings = PhantomSettings(fov=fov, spacing=tuple(spacing), seed=seed, table=table)
    if quirks and layout == "ctorg":  # TCIA's download unpacks to OrganSegmentations/
        out_dir = str(Path(out_dir) / "OrganSegmentations")
    todo = [k for k in range(n_cases) if not case_is_written(layout, out_dir, k, n_cases, first_id, quirks)]
    work = partial(write_case, layout, out_dir, n_cases=n_cases, settings=settings, first_id=first_id,
                   version=version, quirks=quirks)
    for _ in map_with_progress(work, todo, num_processes, f"{layout} phantoms", progress=progress):
        pass
    finish_dataset(layout, out_dir, n_cases, settings, first_id, version)
    return {"written": len(todo), "skipped": n_cases - len(todo)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Generate synthetic whole-body-like CT phantoms (HU, with exam table) with their truth, "
                    "written in the on-disk layout of CT-ORG, TotalSegmentator or AbdomenCT-1K. Re-running "
                    "skips cases already written.")
    parser.add_argument("-o", "--output", required=True, help="output folder (the dataset root)")
    parser.add_argument("-l", "--layout", required=True, choices=["ctorg", "totalseg", "abdomenct1k"],
                        help="dataset layout to write")
    parser.add_argument("-n", "--num_cases", type=int, default=5, help="number of cases. Default: 5")
    parser.add_argument("--fov", default="abdomen", choices=["abdomen", "thorax_abdomen", "head_knee"],
                        help="field of view of every case. Default: abdomen")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 3.0), metavar=("X", "Y", "Z"),
                        help="voxel size in mm. Default: 1.5 1.5 3.0")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case k uses seed+k. Default: 0")
    parser.add_argument("--first_id", type=int, default=0,
                        help="number of the first case (CT-ORG volume-N, TotalSegmentator sNNNN, "
                             "AbdomenCT-1K Case_N+1). Default: 0")
    parser.add_argument("--version", default="v2", choices=["v1", "v2"],
                        help="TotalSegmentator structure set (totalseg layout only). Default: v2")
    parser.add_argument("--no_table", action="store_true", help="leave out the exam table")
    parser.add_argument("--quirks", action="store_true",
                        help="also write the quirks of the real downloads: CT-ORG inside OrganSegmentations/, every "
                             "second TotalSegmentator/AbdomenCT-1K case with a sheared NIfTI header that SimpleITK "
                             "refuses, the last AbdomenCT-1K image without a mask")
    parser.add_argument("-np", type=int, default=1, help="number of worker processes. Default: 1")
    args = parser.parse_args()
    try:
        counts = generate_dataset(args.layout, args.output, args.num_cases, args.fov, tuple(args.spacing),
                                  args.seed, args.first_id, args.version, not args.no_table, args.np,
                                  quirks=args.quirks)
    except (ValueError, OSError) as e:
        sys.exit(f"nnunet_ctorg_phantoms: error: {e}")
    print(f"{counts['written']} case(s) written, {counts['skipped']} already present, in {args.output}")


if __name__ == "__main__":
    main()
