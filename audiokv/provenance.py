"""Where a result came from: device, library versions and commit, recorded in every results file.

Imports only torch, so that the kernel benchmarks run where the audio and metric
packages are not installed (a GPU machine with its own image).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch


def environment(device: torch.device | str | None = None) -> dict:
    """Device, versions and commit, for results files.

    ``device``: where the work ran; None: the GPU if there is one, else the CPU.
    """
    import audiokv

    commit = os.environ.get("AUDIOKV_COMMIT")  # set where the tree is a copy (its .git may be stale or absent)
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                cwd=Path(__file__).parent,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.CalledProcessError):  # an installed package
            commit = "unknown"
    on = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(on) if on.type == "cuda" else f"{on.type} ({platform.processor() or 'x86'})"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "audiokv": audiokv.__version__,
        "commit": commit,
    }
