"""The walkthrough notebook runs top to bottom (every code cell, in order) and shows the right numbers."""

import json
from pathlib import Path

import matplotlib

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_runs_and_its_numbers_hold(monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(NOTEBOOK.parent)
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace: dict = {}
    for n, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"walkthrough cell {n}", "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
    assert namespace["sss_mean_change"] < 1e-6  # SSS keeps the mean
    kept = namespace["kept"].sum(1)
    assert kept.min() >= 1 and kept.max() <= 1500 and len(set(kept.tolist())) > 1  # budgets differ per head
    assert namespace["held"] <= 0.6 * namespace["dense"] + 24 * 128 * 64 * 2 * 4  # + one page per head
    assert namespace["full_text"] and namespace["compressed_text"]
