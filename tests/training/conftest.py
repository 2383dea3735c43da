"""Fixtures of the training tests."""

import os
import subprocess

import pytest

from tests.conftest import nnunet_command


@pytest.fixture(scope="module")
def planned_dataset(module_nnunet_env):
    """A tiny CT-ORG phantom dataset, planned by nnU-Net (no preprocessing): (raw folder, preprocessed folder)."""
    nnunet_env = module_nnunet_env
    from nnunet_ctorg.dataset_conversion.ctorg import convert_ctorg_dataset
    from nnunet_ctorg.phantoms.cli import generate_dataset

    src = nnunet_env / "ctorg"
    generate_dataset("ctorg", str(src), 5, "abdomen", (10.0, 10.0, 10.0), first_id=21, progress=False)
    generate_dataset("ctorg", str(src), 1, "abdomen", (10.0, 10.0, 10.0), first_id=0, progress=False)
    raw = convert_ctorg_dataset(src, nnunet_env / "nnUNet_raw", 990, "Tiny")
    subprocess.run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "990", "-c", "3d_fullres", "-np", "1",
                    "-npfp", "1", "--no_pbar", "--no_pp"], check=True, capture_output=True, env=dict(os.environ))
    return raw, nnunet_env / "nnUNet_preprocessed" / raw.name
