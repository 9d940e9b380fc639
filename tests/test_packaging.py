"""A non-editable install carries what the checkout uses: every tracked file under audiokv/ is in the wheel."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_every_tracked_package_file(tmp_path):
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listing.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    tracked = listing.stdout.split()
    src = tmp_path / "src"  # a clean copy: a stale build/ in the checkout would hide missing package data
    for name in tracked:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*pip, str(src)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("audiokv-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    missing = [f for f in tracked if f.startswith("audiokv/") and f not in packed]
    assert not missing, f"not in the wheel: {missing[:10]}"
    assert {
        "audiokv/data/calib/whisper-tiny.en.safetensors",
        "audiokv/data/speech/calib_timed/manifest.jsonl",
    } <= packed


def test_the_command_line_help_does_not_import_torch():
    code = "import sys; from audiokv.cli import main\ntry: main(['eval', '--help'])\nexcept SystemExit: pass\n"
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False"), out


def test_python_dash_m_audiokv_is_the_command():
    out = subprocess.run([sys.executable, "-m", "audiokv", "eval", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage: audiokv eval")
