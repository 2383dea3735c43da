"""Seconds per TotalSegmentator case: the converter of a reference commit against the working tree's, in one run.

Writes N phantom cases in the v2.0.1 download layout (``ct.nii.gz`` and 117 gzipped binary masks per case, at
TotalSegmentator's 1.5 mm; ``--quirks`` as ``nnunet_ctorg_phantoms``: every second case has sheared headers that
SimpleITK refuses and nibabel reads), then converts each case with both implementations (``convert_totalseg_job``,
one process; which one goes first alternates from case to case) and prints the seconds per case of each and their
ratio. The reference is the real old code: ``dataset_conversion/totalsegmentator.py`` and ``nnunet_ctorg/io.py``
as ``git show REF:...`` writes them, loaded from a temporary folder; both sides share the working tree's
``dataset_conversion/common.py`` (``write_case``), so only the converter and the readers differ. Then every output
of the two is compared: label and image voxels (equal arrays, same type), their geometry (size, spacing, origin,
direction: the largest difference is printed) and the case records. A JSON line goes to
``benchmarks/results/totalseg_conversion_speed_2core.jsonl``.

    python benchmarks/totalseg_conversion_speed.py [-n 3] [--ref af04e04] [--spacing 1.5 1.5 1.5] [--work DIR]
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "totalseg_conversion_speed_2core.jsonl"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def reference_converter(ref: str, folder: Path):
    """``convert_totalseg_job`` of ``ref``: its totalsegmentator.py and io.py, with the working tree's common.py
    reading through that io.py."""
    (folder / "_ref_io.py").write_text(git("show", f"{ref}:nnunet_ctorg/io.py"))
    common = (REPO / "dataset_conversion" / "common.py").read_text()
    if "from nnunet_ctorg.io import" not in common:
        raise RuntimeError("common.py no longer imports from nnunet_ctorg.io; adapt the reference loader")
    (folder / "_ref_common.py").write_text(common.replace("from nnunet_ctorg.io import", "from _ref_io import"))
    old = (git("show", f"{ref}:dataset_conversion/totalsegmentator.py")
           .replace("from nnunet_ctorg.dataset_conversion.common import", "from _ref_common import")
           .replace("from nnunet_ctorg.io import", "from _ref_io import"))
    (folder / "_ref_totalsegmentator.py").write_text(old)
    sys.path.insert(0, str(folder))
    load_module("_ref_io", folder / "_ref_io.py")
    load_module("_ref_common", folder / "_ref_common.py")
    return load_module("_ref_totalsegmentator", folder / "_ref_totalsegmentator.py").convert_totalseg_job


def geometry(image) -> np.ndarray:
    return np.concatenate([image.GetSpacing(), image.GetOrigin(), image.GetDirection()])


def compare(out_a: Path, out_b: Path, case: str) -> dict:
    """Voxels, type and geometry of the label and image files of ``case`` in both outputs, and the records."""
    import SimpleITK as sitk

    found = {}
    for kind, rel in (("labels", f"labelsTr/{case}.nii.gz"), ("image", f"imagesTr/{case}_0000.nii.gz")):
        a, b = (sitk.ReadImage(str(o / rel)) for o in (out_a, out_b))
        found[f"{kind}_voxels_equal"] = bool(a.GetPixelID() == b.GetPixelID() and a.GetSize() == b.GetSize()
                                             and np.array_equal(sitk.GetArrayViewFromImage(a),
                                                                sitk.GetArrayViewFromImage(b)))
        found[f"{kind}_geometry_max_diff"] = float(np.max(np.abs(geometry(a) - geometry(b))))
    found["records_equal"] = (json.loads((out_a / "annotations" / f"{case}.json").read_text())
                              == json.loads((out_b / "annotations" / f"{case}.json").read_text()))
    return found


def main() -> None:
    import SimpleITK as sitk

    from nnunet_ctorg.dataset_conversion import totalsegmentator as new
    from nnunet_ctorg.dataset_conversion.common import CaseJob
    from nnunet_ctorg.label_scheme import LabelScheme
    from nnunet_ctorg.phantoms.cli import generate_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3, help="cases. Default: 3")
    parser.add_argument("--ref", default="af04e04", help="commit of the previous implementation. Default: af04e04")
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 1.5),
                        help="phantom voxel size in mm. Default: 1.5 1.5 1.5 (TotalSegmentator's)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder (phantoms already there are reused). Default: a temporary one")
    parser.add_argument("--no_record", action="store_true", help="do not append the result to " + RESULTS.name)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="totalseg_speed_"))
    src = work / "src"
    generate_dataset("totalseg", str(src), args.n, "thorax_abdomen", tuple(args.spacing), progress=False,
                     num_processes=1, quirks=True)
    old_job = reference_converter(args.ref, Path(tempfile.mkdtemp(prefix="totalseg_ref_", dir=work)))
    converters = {"old": old_job, "new": new.convert_totalseg_job}
    scheme = LabelScheme.load(None)
    outs = {k: work / f"out_{k}" for k in converters}
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
    cases = sorted(p.name for p in src.iterdir() if p.is_dir())[: args.n]
    load_before = os.getloadavg()
    seconds = {k: [] for k in converters}
    for i, image_id in enumerate(cases):
        for kind in (("old", "new") if i % 2 == 0 else ("new", "old")):
            job = CaseJob(case=f"totalseg_{image_id}", split="Tr",
                          inputs={"image_id": image_id, "folder": str(src / image_id), "version": "v2",
                                  "out": str(outs[kind])})
            t = time.perf_counter()
            converters[kind](job, scheme)
            seconds[kind].append(time.perf_counter() - t)
        print(f"{image_id}: old {seconds['old'][-1]:.2f} s, new {seconds['new'][-1]:.2f} s", flush=True)
    load_after = os.getloadavg()

    checks = [compare(outs["old"], outs["new"], f"totalseg_{c}") for c in cases]
    identical = all(c["labels_voxels_equal"] and c["image_voxels_equal"] and c["records_equal"]
                    and c["labels_geometry_max_diff"] == 0.0 and c["image_geometry_max_diff"] <= 1e-5 for c in checks)
    images = [sitk.ReadImage(str(outs["new"] / "imagesTr" / f"totalseg_{c}_0000.nii.gz")) for c in cases]
    old_s, new_s = (float(np.mean(seconds[k])) for k in ("old", "new"))
    row = {
        "date": time.strftime("%Y-%m-%d"), "commit": git("rev-parse", "--short", "HEAD").strip(),
        "tree_changed": bool(git("status", "--porcelain", "--", "dataset_conversion", "nnunet_ctorg").strip()),
        "ref": args.ref, "cases": len(cases), "masks_per_case": len(list((src / cases[0] / "segmentations").iterdir())),
        "spacing_mm": list(args.spacing), "sizes": [list(i.GetSize()) for i in images],
        "megavoxels_per_case": round(float(np.mean([i.GetNumberOfPixels() for i in images])) / 1e6, 1),
        "old_s_per_case": round(old_s, 2), "new_s_per_case": round(new_s, 2), "ratio": round(old_s / new_s, 2),
        "old_s": [round(s, 2) for s in seconds["old"]], "new_s": [round(s, 2) for s in seconds["new"]],
        "identical": identical,
        "labels_geometry_max_diff": max(c["labels_geometry_max_diff"] for c in checks),
        "image_geometry_max_diff": max(c["image_geometry_max_diff"] for c in checks),
        "mask_read_threads": new.MASK_READ_THREADS, "cpus": os.cpu_count(),
        "load_avg_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "python": platform.python_version(), "simpleitk": sitk.Version.VersionString(),
        "command": "python benchmarks/totalseg_conversion_speed.py " + " ".join(sys.argv[1:]),
    }
    print(f"--- {len(cases)} cases of {row['megavoxels_per_case']} MVox, {row['masks_per_case']} masks each, "
          f"{os.cpu_count()} CPU cores (load {row['load_avg_1min_before_after']}) ---")
    print(f"old ({args.ref}): {old_s:.2f} s/case   new: {new_s:.2f} s/case   ratio {old_s / new_s:.2f}x")
    print(f"identical: {'yes' if identical else 'NO'} (label voxels {all(c['labels_voxels_equal'] for c in checks)}, "
          f"image voxels {all(c['image_voxels_equal'] for c in checks)}, records "
          f"{all(c['records_equal'] for c in checks)}; largest geometry difference labels "
          f"{row['labels_geometry_max_diff']:.3g}, image {row['image_geometry_max_diff']:.3g})")
    if not args.no_record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"appended to {RESULTS.relative_to(REPO)}")
    if args.work is None:
        shutil.rmtree(work)
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
