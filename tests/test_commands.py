"""Every console script of pyproject.toml answers --help (heavy imports stay inside main())."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, nnunet_command

# [project.scripts] entries (tomllib needs Python 3.11; the package supports 3.10)
_SECTION = (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1].split("\n[")[0]
SCRIPTS = sorted(re.findall(r"^(nnunet_ctorg_\w+) = ", _SECTION, flags=re.M))


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_explains_the_command(script):
    path = nnunet_command(script)
    if not Path(path).is_file():
        pytest.fail(f"{script} is not installed next to the interpreter: reinstall with pip install -e .")
    proc = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout and len(proc.stdout) > 200
