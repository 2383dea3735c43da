"""Preprocessing of one CT for 3d_fullres vs the anti-aliased 3 mm configuration (issue 9).

Plans a small phantom dataset at fine spacing (default 0.8 mm in-plane, 1.5 mm slices, like a clinical
abdominal CT) with ``IsotropicAntiAliasedPlanner`` and times, on one case, nnU-Net's ``run_case`` for
(a) 3d_fullres, (b) 3d_3mm with nnU-Net's plain resampling, (c) 3d_3mm anti-aliased (ours); prints
seconds, output voxels and the ratios (c)/(a) and (c)/(b) (the cost of the filter). Then the same on
the real CT of ../shared (already at 3 mm: the filter is a no-op there and (c) ~ (b)).

    python benchmarks/antialiased_3mm.py [--spacing 0.8 0.8 1.5] [--repeats 3]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

REAL_CT = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_ct" / "example_ct.nii.gz"


def time_case(preprocessor, files, plans, configuration, dataset_json, repeats):
    times, shape = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        data, _, _ = preprocessor.run_case(files, None, plans, configuration, dataset_json)
        times.append(time.perf_counter() - start)
        shape = data.shape[1:]
    return statistics.median(times), shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5], help="phantom spacing x y z mm")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nnunet_ctorg_aa_"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir()
        os.environ[name] = str(work / name)

    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.phantoms.cli import generate_dataset
    from nnunet_ctorg.planning.antialiasing import AntiAliasedPreprocessor, IsotropicAntiAliasedPlanner

    generate_dataset("ctorg", str(work / "ctorg"), 5, "abdomen", tuple(args.spacing), first_id=21, progress=False)
    raw = convert_ctorg_dataset(work / "ctorg", work / "nnUNet_raw", 994, "AABench")
    extract_fingerprint_dataset(994, num_processes=2, verbose=False, show_progress_bar=False)
    IsotropicAntiAliasedPlanner(994).plan_experiment()
    plans = PlansManager(str(work / "nnUNet_preprocessed" / raw.name / "nnUNetPlans.json"))
    dataset_json = json.loads((raw / "dataset.json").read_text())
    aa = plans.get_configuration("3d_3mm")
    plain = PlansManager({**plans.plans, "configurations": {
        "3d_3mm": {k: v for k, v in plans.plans["configurations"]["3d_3mm"].items() if k != "antialiasing"}}})
    cases = {"phantom": [str(raw / "imagesTr" / "ctorg_021_0000.nii.gz")]}
    if REAL_CT.is_file():
        cases["real CT"] = [str(REAL_CT)]
    for name, files in cases.items():
        t_a, s_a = time_case(DefaultPreprocessor(verbose=False), files, plans, plans.get_configuration("3d_fullres"),
                             dataset_json, args.repeats)
        t_b, s_b = time_case(DefaultPreprocessor(verbose=False), files, plain, plain.get_configuration("3d_3mm"),
                             dataset_json, args.repeats)
        t_c, s_c = time_case(AntiAliasedPreprocessor(verbose=False), files, plans, aa, dataset_json, args.repeats)
        print(f"{name}: (a) 3d_fullres {t_a:.2f} s -> {tuple(s_a)} | (b) 3 mm plain {t_b:.2f} s | "
              f"(c) 3 mm anti-aliased {t_c:.2f} s -> {tuple(s_c)} | (c)/(a) {t_c / t_a:.2f}, (c)/(b) {t_c / t_b:.2f}")
    fullres = plans.get_configuration("3d_fullres")
    print(f"3d_3mm patch {aa.patch_size}, batch {aa.batch_size}; 3d_fullres patch {fullres.patch_size}, "
          f"spacing {fullres.spacing}")


if __name__ == "__main__":
    main()
