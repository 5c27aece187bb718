"""`rotator demo` is the README's first command: it must succeed on its own, as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end_and_prints_no_values(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROTATOR_", "AWS_", "VAULT_"))}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-m", "rotator", "demo"], capture_output=True, text=True,
                            timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo finished: rotation complete, previous token revoked" in result.stdout
    assert "search-frontend: rotated" in result.stdout
    assert "step=promote" in result.stderr or '"step": "promote"' in result.stderr
    assert "hvs." not in result.stdout + result.stderr          # the emulator's root token
