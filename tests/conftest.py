"""Shared fixtures: a synthetic CT phantom, the real CT of ../shared, and a tiny nnU-Net dataset."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_CT_DIR = REPO.parent / "shared" / "data" / "real_ct"


@pytest.fixture(scope="session")
def phantom():
    """A small thorax-abdomen phantom with table, anisotropic spacing."""
    from nnunet_ctorg.phantoms import generate_phantom

    return generate_phantom(seed=7, fov="thorax_abdomen", spacing=(3.0, 3.0, 4.0))


@pytest.fixture(scope="session")
def real_ct_dir() -> Path:
    if not (REAL_CT_DIR / "example_ct_sm.nii.gz").is_file():
        pytest.skip(f"real CT data not found in {REAL_CT_DIR}")
    return REAL_CT_DIR


@pytest.fixture()
def nnunet_env(tmp_path, monkeypatch) -> Path:
    """nnU-Net's three folders inside a temporary folder, and our trainers findable."""
    from nnunet_ctorg.env import trainer_folder

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_extTrainer", trainer_folder())
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    monkeypatch.setenv("nnUNet_def_n_proc", "1")
    return tmp_path


def nnunet_command(name: str) -> str:
    """Path of an nnU-Net console script next to the running interpreter (venv need not be active)."""
    import sys

    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else name


def child_env() -> dict[str, str]:
    return dict(os.environ)
