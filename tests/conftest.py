"""Shared fixtures: a synthetic CT phantom, the real CT of tests/data, and a tiny nnU-Net dataset."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_CT_DIR = REPO / "tests" / "data" / "real_ct"  # TotalSegmentator's example CT (Apache-2.0, see its README)


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


def _set_nnunet_env(root: Path, mp: pytest.MonkeyPatch) -> Path:
    from nnunet_ctorg.env import trainer_folder

    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / name).mkdir(exist_ok=True)
        mp.setenv(name, str(root / name))
    mp.setenv("nnUNet_extTrainer", trainer_folder())
    mp.setenv("nnUNet_n_proc_DA", "1")
    mp.setenv("nnUNet_def_n_proc", "1")
    mp.setenv("MPLCONFIGDIR", str(root / ".matplotlib"))
    return root


@pytest.fixture()
def nnunet_env(tmp_path, monkeypatch) -> Path:
    """nnU-Net's three folders inside a temporary folder, and our trainers findable."""
    return _set_nnunet_env(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def module_nnunet_env(tmp_path_factory) -> Path:
    """``nnunet_env`` shared by the tests of one module (for data that is slow to plan)."""
    with pytest.MonkeyPatch.context() as mp:
        yield _set_nnunet_env(tmp_path_factory.mktemp("nnunet"), mp)


def nnunet_command(name: str) -> str:
    """Path of an nnU-Net console script next to the running interpreter."""
    from nnunet_ctorg.demo import console_script

    return console_script(name)
