"""Pseudo-label completion throughput: cases per minute and peak RAM for a 10-case phantom set (issue 8).

AbdomenCT-1K-style phantoms (liver, kidneys, spleen, pancreas annotated; lungs, bone, bladder, brain
missing) are converted, merged with ``--unannotated ignore`` and completed by two teachers: by default
the lung and bone morphology labelers; ``--model`` replaces the bone labeler by an nnU-Net model folder
(e.g. the README demo's, which knows lungs and bone). Peak RAM is the process's high-water mark.

    python benchmarks/completion.py [--cases 10] [--spacing 1.5 1.5 3] [--model MODEL_FOLDER]
"""

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10, help="phantom cases (default 10)")
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 3.0], help="x y z mm (default 1.5 1.5 3)")
    parser.add_argument("--model", type=Path, default=None, help="nnU-Net model folder to use as the second teacher")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="nnunet_ctorg_completion_"))
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (work / name).mkdir()
        os.environ[name] = str(work / name)
    from nnunet_ctorg.dataset_conversion.abdomenct1k import convert_abdomenct1k_dataset
    from nnunet_ctorg.dataset_conversion.completion import Teacher, complete_dataset
    from nnunet_ctorg.dataset_conversion.merge import merge_datasets
    from nnunet_ctorg.phantoms.cli import generate_dataset

    raw = work / "nnUNet_raw"
    generate_dataset("abdomenct1k", str(work / "ab"), args.cases, "thorax_abdomen", tuple(args.spacing), seed=1,
                     num_processes=2, progress=False)
    convert_abdomenct1k_dataset(work / "ab", raw, 81, num_processes=2)
    merge_datasets([81], raw, 82, "Merged", "ignore", num_processes=2)
    teachers = [Teacher("lung_morph", "lungs")]
    teachers.append(Teacher("model", str(args.model), organs=["bone"]) if args.model
                    else Teacher("bone_morph", "bones"))
    start = time.perf_counter()
    complete_dataset(82, raw, 83, teachers, "Completed", use_mirroring=False, progress=True)
    elapsed = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"{args.cases} cases at {tuple(args.spacing)} mm, teachers {[t.name for t in teachers]}: {elapsed:.1f} s "
          f"-> {args.cases / elapsed * 60:.1f} cases/min; peak RSS {peak_gb:.2f} GB ({os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
