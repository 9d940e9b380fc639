import json

from benchmarks.decode import main


def test_decode_benchmark_checks_correctness_and_counts_no_recompiles(tmp_path):
    out = tmp_path / "decode.json"
    args = ["--context", "300", "--ratios", "0.0", "0.6", "--steps", "6", "--shape", "4,2,16", "--out", str(out)]
    rows = main([*args, "--device", "cpu"])
    saved = json.loads(out.read_text())
    assert {"device", "torch", "commit", "dtype", "rows"} <= set(saved) and len(saved["rows"]) == 2
    for row in rows:
        assert row["max_abs_error"] < 1e-4
        assert row["recompiles_during_decode"] == 0
        assert row["audiokv_s"] > 0 and row["dense_sdpa_s"] > 0
    assert rows[1]["kv_bytes"] < 0.75 * rows[1]["kv_bytes_dense"]
