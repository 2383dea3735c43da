"""Fixtures of the inference tests."""

import pytest
import SimpleITK as sitk


@pytest.fixture(scope="module")
def real_ct_small(real_ct_dir):
    """The 30-slice real CT at 6 x 6 mm in-plane (int16)."""
    return sitk.Cast(sitk.ReadImage(str(real_ct_dir / "example_ct_sm.nii.gz"))[::2, ::2, :], sitk.sitkInt16)
