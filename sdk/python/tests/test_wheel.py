"""The built wheel installs into a fresh virtual environment and imports, typed."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_imports(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(SDK)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("mandate_mcp-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    probe = (
        "import importlib.resources, mandate, mandate.envelope as e\n"
        "assert importlib.resources.files('mandate').joinpath('py.typed').is_file()\n"
        "k = mandate.SigningKey.generate('EdDSA')\n"
        "t = mandate.Signer(k).sign(mandate.Claims(iss='c', aud='https://m', actor=e.Actor('user','u','t'),"
        " agent=e.Agent('a'), session=e.Session('s'), delegation=e.Delegation('on_behalf_of')))\n"
        "assert t.count('.') == 2\n"
        "try:\n    import mcp\nexcept ImportError:\n    print('core-only')\n"
    )
    out = subprocess.run([str(py), "-c", probe], check=True, capture_output=True, text=True).stdout
    assert "core-only" in out  # the extras stay optional
