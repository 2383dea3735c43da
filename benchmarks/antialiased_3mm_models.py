"""Same-budget models: 3d_fullres vs the anti-aliased 3 mm configuration (issue 9).

A phantom CT-ORG dataset at clinical-like spacing (default 1.5 x 1.5 x 2.5 mm, thorax-abdomen) is planned
with ``IsotropicAntiAliasedPlanner``; three configurations are preprocessed (timed): ``3d_fullres``,
``3d_3mm`` (anti-aliased) and ``3d_3mm_plain`` (nnU-Net's resampling, no filter). Each gets a budget
configuration with the same 64^3 patch and 8 base features and is trained with ``CTOrgIOUTrainer_demo``
(720 iterations): the same model budget, sized for a CPU. Then, per model and per predictor
(``nnunet_ctorg_predict_chunked``, which applies the filter, and ``nnUNetv2_predict``, which does not),
wall time and peak RSS on the held-out phantoms and on the real CT, and the Dice against the reference
labels (phantom labels; TotalSegmentator's reference on the real CT's 30-slice crop).

    python benchmarks/antialiased_3mm_models.py [-o WORK] [--spacing 1.5 1.5 2.5] [--num_train 10]
        [--num_test 3] [--skip_plain] [-device cpu]

Re-running with the same ``-o`` skips finished steps (timings are kept in WORK/results.json).
Run it on an otherwise idle machine: predictions are timed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASET_ID, DATASET_NAME = 995, "AAModels"
PLANS, TRAINER = "nnUNetPlans", "CTOrgIOUTrainer_demo"
BUDGET_PATCH, BUDGET_FEATURES = (64, 64, 64), 8
REAL_CT = Path(__file__).resolve().parents[1] / "tests" / "data" / "real_ct"


def timed_run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` under /usr/bin/time; (wall seconds, peak RSS in GB). Raises on failure."""
    from nnunet_ctorg.demo import console_script

    with tempfile.NamedTemporaryFile(suffix=".time") as t, open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(["/usr/bin/time", "-o", t.name, "-f", "%e %M", console_script(cmd[0]), *cmd[1:]],
                              env=env, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); see {log}")
        wall, kb = Path(t.name).read_text().split()[-2:]
    return float(wall), float(kb) / 2**20


def real_ct_dice(prediction: Path, reference: Path, names: dict[str, str]) -> dict[str, float]:
    """Dice per CT-ORG organ of ``prediction`` vs TotalSegmentator's reference (organs present in it)."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_ctorg.label_scheme import LabelScheme
    from nnunet_ctorg.labels import CTORG_LABELS

    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction)))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    scheme = LabelScheme.load(None)
    scores = {}
    for organ, idx in CTORG_LABELS.items():
        ids = [int(i) for i, n in names.items() if n in scheme.totalseg_structures(organ)]
        truth = np.isin(ref, ids)
        if idx and truth.sum() > 100:
            p = pred == idx
            scores[organ] = float(2 * (p & truth).sum() / (p.sum() + truth.sum()))
    return scores


def prepare(work: Path, args: argparse.Namespace, results: dict, save) -> list[str]:
    """Phantoms, raw dataset, plans with budget configurations, timed preprocessing. Returns configurations."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, preprocess_dataset
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.demo import add_cpu_demo_configuration
    from nnunet_ctorg.io import write_text_atomic
    from nnunet_ctorg.label_scheme import DEFAULT_SCHEME, LabelScheme
    from nnunet_ctorg.labels import CTORG_LABELS
    from nnunet_ctorg.phantoms.cli import generate_dataset
    from nnunet_ctorg.planning.antialiasing import AntiAliasedPreprocessor, IsotropicAntiAliasedPlanner

    configurations = ["3d_fullres", "3d_3mm"] + ([] if args.skip_plain else ["3d_3mm_plain"])
    phantoms = work / "ctorg_phantoms"
    generate_dataset("ctorg", str(phantoms), args.num_test, "thorax_abdomen", tuple(args.spacing), first_id=0,
                     num_processes=args.np)
    generate_dataset("ctorg", str(phantoms), args.num_train, "thorax_abdomen", tuple(args.spacing), first_id=21,
                     num_processes=args.np)
    scheme = LabelScheme.from_dict({"labels": CTORG_LABELS, "sources": {"ctorg": DEFAULT_SCHEME["sources"]["ctorg"]}})
    convert_ctorg_dataset(phantoms, work / "nnUNet_raw", DATASET_ID, DATASET_NAME, scheme=scheme,
                          num_processes=args.np)
    plans_file = work / "nnUNet_preprocessed" / f"Dataset{DATASET_ID}_{DATASET_NAME}" / f"{PLANS}.json"
    if "plans" not in results:
        extract_fingerprint_dataset(DATASET_ID, num_processes=args.np, verbose=False, show_progress_bar=False)
        IsotropicAntiAliasedPlanner(DATASET_ID).plan_experiment()
        plans = json.loads(plans_file.read_text())
        plans["configurations"]["3d_3mm_plain"] = {"inherits_from": "3d_3mm", "antialiasing": None,
                                                   "data_identifier": f"{PLANS}_3d_3mm_plain"}
        write_text_atomic(json.dumps(plans, indent=4), plans_file)
        for c in ("3d_fullres", "3d_3mm", "3d_3mm_plain"):
            add_cpu_demo_configuration(plans_file, f"{c}_budget", BUDGET_PATCH, BUDGET_FEATURES, parent=c)
        plans = json.loads(plans_file.read_text())["configurations"]
        results["plans"] = {c: {k: plans[c].get(k) for k in ("spacing", "patch_size", "batch_size")}
                            for c in ("3d_fullres", "3d_3mm")}
        save()
    for c in configurations:
        key = f"preprocess {c}"
        if key in results:
            continue
        start = time.perf_counter()
        if c == "3d_fullres":
            preprocess_dataset(DATASET_ID, PLANS, [c], [args.np], verbose=False, show_progress_bar=False)
        else:
            preprocessor = (AntiAliasedPreprocessor if c == "3d_3mm" else DefaultPreprocessor)(verbose=False)
            preprocessor.show_progress_bar = False
            preprocessor.run(DATASET_ID, c, PLANS, num_processes=args.np)
        results[key] = {"seconds": time.perf_counter() - start, "cases": args.num_train}
        save()
    return configurations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", type=Path, default=Path(tempfile.gettempdir()) / "nnunet_ctorg_aa_models",
                        help="working folder (resumable)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 2.5], help="phantom spacing x y z mm")
    parser.add_argument("--num_train", type=int, default=10, help="training phantoms (>= 5)")
    parser.add_argument("--num_test", type=int, default=3, help="held-out phantoms")
    parser.add_argument("--skip_plain", action="store_true", help="no 3d_3mm_plain model (saves one training)")
    parser.add_argument("-np", type=int, default=2, help="processes for phantoms and preprocessing")
    parser.add_argument("-device", default="cpu", choices=["cpu", "cuda"], help="training and prediction device")
    args = parser.parse_args()

    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_ctorg.demo import dice_table, nnunet_environment
    from nnunet_ctorg.io import write_text_atomic
    from nnunet_ctorg.labels import CTORG_LABELS

    work = args.o.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = nnunet_environment(work)
    os.environ.update({k: env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")})
    results_file, log = work / "results.json", work / "log.txt"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}

    def save() -> None:
        write_text_atomic(json.dumps(results, indent=2), results_file)

    configurations = prepare(work, args, results, save)
    ds = f"Dataset{DATASET_ID}_{DATASET_NAME}"
    raw = work / "nnUNet_raw" / ds
    inputs = {"phantoms": raw / "imagesTs"}
    if (REAL_CT / "example_ct.nii.gz").is_file():
        for name in ("example_ct", "example_ct_sm"):
            folder = work / "inputs" / name
            folder.mkdir(parents=True, exist_ok=True)
            if not (folder / f"{name}_0000.nii.gz").exists():
                (folder / f"{name}_0000.nii.gz").symlink_to(REAL_CT / f"{name}.nii.gz")
            inputs[name] = folder

    for c in configurations:
        budget = f"{c}_budget"
        model = work / "nnUNet_results" / ds / f"{TRAINER}__{PLANS}__{budget}"
        if f"train {c}" not in results:
            print(f"training {budget} ...", flush=True)
            wall, _ = timed_run(["nnUNetv2_train", str(DATASET_ID), budget, "0", "-tr", TRAINER, "-p", PLANS,
                                 "-device", args.device], env, log)
            results[f"train {c}"] = {"seconds": wall}
            save()
        for predictor in ("chunked", "nnunet"):
            for name, folder in inputs.items():
                key = f"predict {c} {predictor} {name}"
                if key in results:
                    continue
                out = work / "predictions" / c / predictor / name
                if predictor == "chunked":
                    cmd = ["nnunet_ctorg_predict_chunked", "-i", str(folder), "-o", str(out), "-m", str(model),
                           "-f", "0", "-device", args.device, "--quiet", "--no_body_crop"]  # as nnU-Net
                else:
                    cmd = ["nnUNetv2_predict", "-i", str(folder), "-o", str(out), "-d", str(DATASET_ID), "-c", budget,
                           "-f", "0", "-tr", TRAINER, "-p", PLANS, "-device", args.device, "-npp", "1", "-nps", "1"]
                wall, peak = timed_run(cmd, env, log)
                entry = {"seconds": wall, "peak_rss_gb": peak, "cases": len(list(folder.glob("*_0000.nii.gz")))}
                if name == "phantoms":
                    summary = out / "summary.json"
                    compute_metrics_on_folder(str(raw / "labelsTs"), str(out), str(summary), SimpleITKIO(),
                                              ".nii.gz", [v for v in CTORG_LABELS.values() if v], num_processes=1)
                    entry["dice"] = {n: m for n, m, *_ in dice_table(json.loads(summary.read_text()), CTORG_LABELS)}
                elif name == "example_ct_sm":
                    names = json.loads((REAL_CT / "example_seg_labels.json").read_text())
                    entry["dice"] = real_ct_dice(out / "example_ct_sm.nii.gz", REAL_CT / "example_seg.nii.gz", names)
                results[key] = entry
                save()

    print(f"\nphantoms {args.spacing} mm, {args.num_train} training / {args.num_test} held-out; budget: patch "
          f"{BUDGET_PATCH}, {BUDGET_FEATURES} base features, {TRAINER}; plans {results['plans']}")
    for c in configurations:
        p = results[f"preprocess {c}"]
        train = results.get(f"train {c}", {}).get("seconds", float("nan"))
        print(f"{c}: preprocessing {p['seconds'] / p['cases']:.2f} s/case, training {train:.0f} s")
        for key, entry in results.items():
            if key.startswith(f"predict {c} "):
                dice = " ".join(f"{k} {v:.3f}" for k, v in entry.get("dice", {}).items())
                print(f"  {key[len('predict ' + c) + 1:]:<24} {entry['seconds']:6.1f} s ({entry['cases']} case(s)), "
                      f"peak RSS {entry['peak_rss_gb']:.2f} GB  {dice}")
    for predictor in ("chunked", "nnunet"):
        for name in inputs:
            ref = results.get(f"predict 3d_fullres {predictor} {name}")
            aa = results.get(f"predict 3d_3mm {predictor} {name}")
            if ref and aa:
                print(f"{name}: 3d_3mm / 3d_fullres ({predictor}): time {aa['seconds'] / ref['seconds']:.2f}, "
                      f"peak RSS {aa['peak_rss_gb'] / ref['peak_rss_gb']:.2f}")
    print(f"results: {results_file}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
