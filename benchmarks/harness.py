"""What every benchmark script shares: the device and dtype options, a timer, and the results file."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from audiokv.provenance import environment

RESULTS = Path(__file__).parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--device`` (CUDA when available) and ``--out``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="results JSON (default: benchmarks/results/<name>-<device>.json)")
    return p


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The chosen device, with bf16 on GPU and fp32 on CPU."""
    device = torch.device(args.device)
    return device, torch.bfloat16 if device.type == "cuda" else torch.float32


def timer_for(device: torch.device):
    """A function that times one call of ``fn`` (CUDA events on GPU, perf_counter on CPU), in seconds."""
    if device.type == "cuda":

        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
    else:

        def run(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

    return run


def write_results(name: str, args: argparse.Namespace, dtype: torch.dtype, rows: list[dict]) -> Path:
    """Write device, versions, commit, dtype and ``rows`` to ``args.out`` or the default results file."""
    out = Path(args.out or RESULTS / f"{name}-{torch.device(args.device).type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**environment(), "dtype": str(dtype), "rows": rows}, indent=1))
    return out
