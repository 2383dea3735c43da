"""The lung and bone labeling commands over a folder."""

import os
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from nnunet_ctorg.labelers_cli import label_folder
from nnunet_ctorg.phantoms.cli import generate_dataset


def test_labels_a_folder_keeps_geometry_skips_done_and_reports_bad_files(tmp_path):
    generate_dataset("abdomenct1k", str(tmp_path / "src"), 2, "thorax_abdomen", (6.0, 6.0, 8.0), progress=False)
    cts = tmp_path / "cts"
    cts.mkdir()
    for p in (tmp_path / "src").rglob("*_0000.nii.gz"):
        p.rename(cts / p.name)
    (cts / "broken.nii.gz").write_bytes(b"nope")
    flat = sitk.ReadImage(str(cts / "Case_00001_0000.nii.gz"))[:, :, 3]
    sitk.WriteImage(flat, str(cts / "flat.nii.gz"))

    summary = label_folder(cts, tmp_path / "out", "lungs", "improved", num_processes=2, progress=False)
    assert sorted(summary["written"]) == ["Case_00001_0000.nii.gz", "Case_00002_0000.nii.gz"]
    assert "cannot be read" in summary["failed"]["broken.nii.gz"]
    assert "3-D" in summary["failed"]["flat.nii.gz"]
    mask = sitk.ReadImage(str(tmp_path / "out" / "Case_00001_0000.nii.gz"))
    image = sitk.ReadImage(str(cts / "Case_00001_0000.nii.gz"))
    assert mask.GetPixelID() == sitk.sitkUInt8 and mask.GetDirection() == image.GetDirection()
    assert mask.GetOrigin() == image.GetOrigin() and sitk.GetArrayFromImage(mask).sum() > 1000
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp")]

    again = label_folder(cts, tmp_path / "out", "lungs", "improved", progress=False)
    assert again["written"] == [] and len(again["skipped"]) == 2


def test_command_line(tmp_path):
    generate_dataset("abdomenct1k", str(tmp_path / "src"), 1, "abdomen", (8.0, 8.0, 10.0), progress=False)
    script = "from nnunet_ctorg.labelers_cli import bones_main; bones_main()"
    src = tmp_path / "src" / "AbdomenCT-1K-ImagePart1"
    ok = subprocess.run([sys.executable, "-c", script, "-i", str(src), "-o", str(tmp_path / "bones")],
                        capture_output=True, text=True, env=dict(os.environ))
    assert ok.returncode == 0 and "1 written" in ok.stdout
    assert np.any(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "bones" / "Case_00001_0000.nii.gz"))))
    bad = subprocess.run([sys.executable, "-c", script, "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "nnunet_ctorg_label_bones: error: input folder not found" in bad.stderr
