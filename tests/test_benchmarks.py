import json
import shutil

import pytest
import torch

from benchmarks.decode import main


def test_decode_benchmark_checks_correctness_and_counts_no_recompiles(tmp_path):
    out = tmp_path / "decode.json"
    args = ["--context", "300", "--ratios", "0.0", "0.6", "--steps", "6", "--shape", "4,2,16", "--out", str(out)]
    rows = main([*args, "--device", "cpu", "--budgets", "skewed", "balanced"])
    saved = json.loads(out.read_text())
    assert {"device", "torch", "commit", "dtype", "rows"} <= set(saved) and len(saved["rows"]) == 4
    for row in rows:
        assert row["max_abs_error"] < 1e-4  # every kernel, against dense attention over the pool's tokens
        assert row["recompiles_during_decode"] == 0
        assert row["audiokv_kernel"] == "rows"  # CPU, 2 rows: the per-row kernel
        assert row["rows_s"] > 0 and row["pages_s"] > 0 and row["flex_s"] > 0  # every CPU kernel timed too
        assert row["copies_rotated"] == 1 and row["dense_backend"] == "default"  # CPU: no L2 rotation, no flash
        assert row["audiokv_bandwidth_fraction"] > 0 and row["dense_bandwidth_fraction"] > 0
    skewed, balanced = rows[1], rows[3]
    assert skewed["kv_bytes"] < 0.75 * skewed["kv_bytes_dense"]
    assert skewed["kept_per_head_min_max"][0] < skewed["kept_per_head_min_max"][1]
    assert balanced["kept_per_head_min_max"][0] == balanced["kept_per_head_min_max"][1]


def test_decode_benchmark_counts_the_recompiles_of_a_growing_pool(tmp_path):
    """A reserve of one token and a page of steps: the pool grows while timed, and flex compiles again."""
    args = ["--context", "300", "--ratios", "0.6", "--steps", "140", "--reserve", "1", "--shape", "4,2,16"]
    (row,) = main([*args, "--device", "cpu", "--out", str(tmp_path / "decode.json")])
    assert row["pool_growths"] > 0 and row["recompiles_during_decode"] >= 1


def test_prefill_benchmark_reports_the_compression_share(tmp_path):
    from benchmarks.prefill import main as prefill

    out = tmp_path / "prefill.json"
    rows = prefill(["--device", "cpu", "--context", "256", "--shape", "4,2,16", "--reps", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert {"device", "torch", "commit", "dtype"} <= set(saved) and saved["rows"] == rows
    assert rows[0]["attention_s"] > 0 and rows[0]["compress_s"] > 0
    assert rows[0]["overhead_share"] == rows[0]["compress_s"] / rows[0]["attention_s"]


def test_generate_benchmark_matches_the_masked_cache_and_frees_memory(tmp_path):
    from benchmarks.generate import main as generate

    out = tmp_path / "generate.json"
    args = [
        "--device",
        "cpu",
        "--layers",
        "2",
        "--context",
        "1024",
        "--ratios",
        "0.5",
        "--new-tokens",
        "6",
        "--reps",
        "1",
    ]
    rows = {r["cache"]: r for r in generate([*args, "--out", str(out)])}
    assert set(rows) == {"dense", "audiokv", "masked"}
    assert rows["audiokv"]["max_logit_diff_vs_masked"] < 1e-4  # same kept tokens, same answer
    assert rows["audiokv"]["steps_compared"] == 6  # in fp32 the greedy tokens never part
    assert rows["masked"]["kv_bytes"] == rows["dense"]["kv_bytes"]  # masking frees nothing
    page = 2 * 2 * 2 * 128 * 32 * 4  # one page per KV head and layer: layers, heads, K/V, tokens, dim, fp32
    assert rows["audiokv"]["kv_bytes"] <= 0.5 * rows["dense"]["kv_bytes"] + page
    assert all(r["decode_tokens_per_s"] > 0 for r in rows.values())


def test_generate_compares_logits_up_to_the_first_step_whose_tokens_part():
    from benchmarks.generate import same_inputs

    a = torch.randn(2, 5, 7)
    assert same_inputs(a, a.clone()) == 5
    b = a.clone()
    b[1, 2, a[1, 2].argmin()] = 100.0  # row 1 picks another token at step 2: steps 0-2 had the same inputs
    assert same_inputs(a, b) == 3


def test_compiled_benchmark_decodes_as_eager_without_recompiles(tmp_path):
    from benchmarks.compiled import main as compiled

    args = ["--device", "cpu", "--layers", "1", "--context", "64", "--steps", "4", "--warmup", "2", "--ratios", "0.5"]
    rows = compiled([*args, "--out", str(tmp_path / "compiled.json")])
    setups = [(c, m) for c in ("dense", "audiokv") for m in ("eager", "compiled")]
    assert [(r["cache"], r["mode"]) for r in rows] == setups
    for row in rows:
        if row["mode"] == "compiled":
            assert row["graphs_after_warmup"] == 0  # one graph per decode step, compiled during warm-up
            assert row["max_logit_diff_vs_eager"] < 1e-4  # the same tokens attended to
    assert json.loads((tmp_path / "compiled.json").read_text())["rows"] == rows


def test_the_splits_share_no_voice_and_no_condition_and_the_sentence_pools_no_phrase():
    import re
    from itertools import combinations

    from benchmarks.speech_set import CLIPS_PER_VOICE, SPLITS

    for (name_a, a), (name_b, b) in combinations(SPLITS.items(), 2):
        if {name_a, name_b} in ({"tune", "tune2"}, {"test", "test2"}):
            continue  # tune2 and test2 are their split's voices and conditions on sentences of their own
        assert not {v.label for v in a["voices"]} & {v.label for v in b["voices"]}
        assert not (set(a["conditions"]) - {"clean"}) & set(b["conditions"])

    def phrases(pool: list[str]) -> set[tuple[str, ...]]:  # every 4-word phrase of the pool
        words = [re.findall(r"[a-z']+", s.lower()) for s in pool]
        return {tuple(w[i : i + 4]) for w in words for i in range(len(w) - 3)}

    pools = {id(s["sentences"]): s["sentences"] for s in SPLITS.values()}.values()  # tune and test share one
    assert len(pools) == 4
    for a, b in combinations(pools, 2):
        assert not phrases(a) & phrases(b)
    voices = {v.label for split in SPLITS.values() for v in split["voices"]}
    clips = sum(len(SPLITS[s]["voices"]) * CLIPS_PER_VOICE[s] for s in SPLITS)
    assert len(voices) >= 10 and clips >= 60


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")
def test_the_speech_sets_sox_effects_repeat_every_sample():
    """sox dithers by default, differently on every run: without ``-D`` two builds of a split differ."""
    import numpy as np

    from benchmarks.speech_set import mu_law, sox

    audio = np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1
    assert np.array_equal(sox(audio, "reverb", "40", "50", "30"), sox(audio, "reverb", "40", "50", "30"))
    assert np.array_equal(mu_law(audio), mu_law(audio))


def test_the_music_copy_mixes_a_pitched_bed_under_each_clip_at_its_drawn_snr(tmp_path):
    """Music, not noise: most of its energy sits in a few pitches (white noise spreads it), at 10-15 dB under speech."""
    import numpy as np

    from audiokv.audio import load_audio, write_wav
    from benchmarks.speech_set import _noise, music_bed, with_music, write_manifest

    def peaked(signal):  # the share of the power in the strongest 1% of the frequency bins
        power = np.sort(np.abs(np.fft.rfft(signal)) ** 2)[::-1]
        return power[: len(power) // 100].sum() / power.sum()

    rng = np.random.default_rng(3)
    bed = music_bed(16_000 * 4, rng)
    assert bed.shape == (64_000,) and np.isfinite(bed).all()
    assert peaked(bed) > 0.8  # its pitches (about 0.9) ...
    assert peaked(_noise("pink", 64_000, rng)) < 0.7 and peaked(_noise("white", 64_000, rng)) < 0.1  # ... not noise
    speech = (np.sin(np.arange(48_000) * 0.05) * 0.3).astype(np.float32)
    (tmp_path / "src").mkdir()
    write_wav(tmp_path / "src" / "a.wav", speech)
    write_manifest(tmp_path / "src", [{"audio_filepath": "a.wav", "text": "t", "condition": "clean"}])
    (row,) = with_music(tmp_path / "src", tmp_path / "out")
    assert row["condition"] == "clean, music at 10-15 dB SNR"
    music = load_audio(tmp_path / "out" / "a.wav") - load_audio(tmp_path / "src" / "a.wav")
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(music**2))
    assert 9.9 < snr < 15.1


def test_the_fast_copy_speaks_each_clip_faster_at_the_same_pitch(tmp_path):
    """1.3 times as fast: 1/1.3 of the length, and a tone keeps its frequency (a speed change would raise it)."""
    import numpy as np

    from audiokv.audio import load_audio, write_wav
    from benchmarks.speech_set import FAST_TEMPO, with_tempo, write_manifest

    tone = (np.sin(2 * np.pi * 200 * np.arange(48_000) / 16_000) * 0.3).astype(np.float32)  # 3 s at 200 Hz
    (tmp_path / "src").mkdir()
    write_wav(tmp_path / "src" / "a.wav", tone)
    write_manifest(tmp_path / "src", [{"audio_filepath": "a.wav", "text": "t", "condition": "clean"}])
    (row,) = with_tempo(tmp_path / "src", tmp_path / "out")
    assert row["condition"] == f"clean, {FAST_TEMPO:g}x tempo"
    fast = load_audio(tmp_path / "out" / "a.wav")
    assert abs(len(fast) / 16_000 - 3 / FAST_TEMPO) < 0.02 and row["duration"] == round(len(fast) / 16_000, 2)
    spectrum = np.abs(np.fft.rfft(fast))
    assert abs(np.argmax(spectrum) * 16_000 / len(fast) - 200) < 2


def test_the_gsm_copy_codes_each_clip_not_only_band_limits_it(tmp_path):
    """Nothing above 4 kHz, as the telephone band; and far from the same clip only resampled to 8 kHz and back."""
    import numpy as np

    from audiokv.audio import load_audio, write_wav
    from benchmarks.speech_set import sox, with_gsm, write_manifest

    rng = np.random.default_rng(4)
    t = np.arange(32_000) / 16_000
    voice = sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate((180, 360, 540, 720, 2500, 5000), 1))
    voice = (voice * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 0.1 + rng.normal(0, 0.002, t.size)).astype(np.float32)
    (tmp_path / "src").mkdir()
    write_wav(tmp_path / "src" / "a.wav", voice)
    write_manifest(tmp_path / "src", [{"audio_filepath": "a.wav", "text": "t", "condition": "clean"}])
    (row,) = with_gsm(tmp_path / "src", tmp_path / "out")
    assert row["condition"] == "clean, GSM"
    coded = load_audio(tmp_path / "out" / "a.wav")
    spectrum = np.abs(np.fft.rfft(coded)) ** 2
    assert spectrum[int(4_100 * coded.size / 16_000) :].sum() < 1e-3 * spectrum.sum()
    plain = sox(voice, encode=("-r", "8000"))  # band-limited alike, not coded
    n = min(len(plain), len(coded))
    residual = 10 * np.log10(np.mean(plain[:n] ** 2) / np.mean((plain[:n] - coded[:n]) ** 2))
    assert 5 < residual < 20  # the same clip, aligned, through a codec modelling the voice, not a waveform copy


def test_the_real_split_takes_each_speakers_longest_clean_recordings_of_2_to_30_s(tmp_path):
    import numpy as np
    import soundfile

    from benchmarks.real_set import KNOWN_MISSING, PER_VOICE, seconds, select

    def clip(name: str, seconds: float, voice: str, text: str = "some words") -> dict:
        path = tmp_path / f"{name}.wav"
        soundfile.write(path, np.zeros(int(16_000 * seconds), dtype=np.int16), 16_000)
        return {"path": path, "text": text, "voice": voice}

    many = [clip(f"a{i}", 3 + i, "one speaker") for i in range(PER_VOICE + 2)]  # 3..14 s: the two shortest go
    others = [
        clip("short", 1.5, "b"),
        clip("long", 31, "b"),
        clip("tagged", 5, "b", "<cutoff-montreal> montreal"),
        clip("laugh", 5, "b", "[laughter] forced"),
        clip("kept", 5, "b"),
        {"path": tmp_path / sorted(KNOWN_MISSING)[0], "text": "absent from its source", "voice": "b"},
    ]
    chosen = select(others + many)
    assert [c["path"].stem for c in chosen] == ["kept"] + [f"a{i}" for i in range(2, PER_VOICE + 2)]
    with pytest.raises(SystemExit, match="not where"):  # any other missing recording is an error
        select([*others, {"path": tmp_path / "moved.wav", "text": "words", "voice": "b"}])
    raw = tmp_path / "speech.raw"
    raw.write_bytes(bytes(2 * 16_000 * 3))  # 3 s of 16-bit samples at 16 kHz
    assert seconds({"path": raw, "raw": True}) == 3.0
    assert seconds({"path": many[0]["path"], "trim": (0.5, 2.0)}) == 1.5


def test_report_table_has_a_cell_per_policy_and_ratio_with_loops_and_early_stops():
    from benchmarks.report import table

    rows = [
        {"policy": "full", "compression_ratio": 0.0, "wer": 0.081, "repetition_rate": 0.0},
        {"policy": "stride", "compression_ratio": 0.4, "wer": 0.09, "repetition_rate": 0.0},
        {"policy": "stride", "compression_ratio": 0.8, "wer": 0.5, "repetition_rate": 0.25},
        {"policy": "audiokv", "compression_ratio": 0.8, "wer": 0.1234, "repetition_rate": 0.0, "short_rate": 0.0},
        {"policy": "tova", "compression_ratio": 0.8, "wer": 0.4, "repetition_rate": 0.25, "short_rate": 0.5},
        {"policy": "audiokv", "compression_ratio": 0.8, "wer": 0.2, "repetition_rate": 0.0, "knobs": {"safeguard": 1}},
    ]
    text = table({"model": "m", "data": "d", "commit": "abc", "device": "cpu", "rows": rows})
    lines = text.splitlines()
    assert lines[2] == "| policy | 0.4 | 0.8 |"
    assert "| full cache | 8.1 (every ratio) | |" in lines
    assert "| stride | 9.0 | 50.0 (25% loops) |" in lines
    assert "| audiokv |  | 12.3 |" in lines
    assert "| tova |  | 40.0 (25% loops, 50% short) |" in lines
    assert "| audiokv safeguard=1 |  | 20.0 |" in lines
    assert "beam search" not in lines[0]  # greedy, as every file made before --beams
    beam = table({"model": "m", "data": "d", "commit": "abc", "device": "cpu", "beams": 4, "rows": rows})
    assert beam.splitlines()[0] == "m, `d`, WER %, beam search (4 beams) (commit abc, cpu)"


def test_a_profile_file_renders_a_row_per_call_and_its_graph_replay():
    from benchmarks.report import render

    def call(wall, device):
        return {"wall_us": wall, "device_us": device, "launches": 3.0, "top": {"kernel_a": device / 2}}

    row = {"heads": 28, "kv_heads": 4, "head_dim": 128, "batch": 1, "context": 16384, "compression_ratio": 0.7,
           "audiokv_step": call(900.0, 60.0), "dense_sdpa": call(90.0, 12.0), "flex_call_graphed_us": 40.0}  # fmt: skip
    lines = render("decode-profile-cuda", {"commit": "abc", "device": "gpu", "dtype": "bf16", "rows": [row]})
    lines = lines.splitlines()
    assert "| 16384 | 0.7 | audiokv layer step (eager) | 900 | 60.0 | 3 | kernel_a (30.0 µs) |" in lines
    assert "| 16384 | 0.7 | dense SDPA (eager) | 90 | 12.0 | 3 | kernel_a (6.0 µs) |" in lines
    assert "| 16384 | 0.7 | flex call alone, CUDA graph replay | 40 | | | |" in lines


def test_a_timing_file_also_gets_each_runs_time_relative_to_the_full_cache():
    from benchmarks.report import render

    rows = [
        {"policy": "audiokv", "compression_ratio": 0.7, "wer": 0.2, "repetition_rate": 0.0, "seconds": 30.0},
        {"policy": "full", "compression_ratio": 0.0, "wer": 0.19, "repetition_rate": 0.0, "seconds": 40.0},
    ]
    result = {"model": "m", "data": "d", "commit": "abc", "device": "cpu", "rows": rows}
    text = render("time-whisper", result)
    assert "| full cache | 1.00 (every ratio) |" in text and "| audiokv | 0.75 |" in text
    assert "0.75" not in render("test-whisper", result)  # other files: WER only


def test_update_replaces_the_rerun_policies_and_the_caption_names_each_commit():
    from audiokv.eval import check_same_run, merge_results
    from benchmarks.report import table

    def row(policy, ratio, wer, **extra):
        return {"policy": policy, "compression_ratio": ratio, "wer": wer, "repetition_rate": 0.0, "n": 4, **extra}

    run = {"model": "m", "task": "asr", "calibration": None, "seed": 0, "device": "cpu"}
    old = {**run, "data": "/a/benchmarks/d.jsonl", "commit": "aaa",  # rows made before rows carried a commit
           "rows": [row("full", 0.0, 0.1), row("audiokv", 0.4, 0.3), row("audiokv", 0.8, 0.5),
                    row("stride", 0.4, 0.2), row("audiokv-no-more", 0.4, 0.2)]}  # fmt: skip
    new = {
        **run,
        "data": "/b/benchmarks/d.jsonl",
        "commit": "bbb",  # the same data from another checkout
        "rows": [row("audiokv", 0.4, 0.11, commit="bbb"), row("audiokv", 0.8, 0.12, commit="bbb")],
    }
    merged = merge_results(old, new)
    assert [(r["policy"], r["wer"], r["commit"]) for r in merged["rows"]] == [  # a policy that is gone goes
        ("full", 0.1, "aaa"), ("audiokv", 0.11, "bbb"), ("audiokv", 0.12, "bbb"), ("stride", 0.2, "aaa"),
    ]  # fmt: skip
    assert "(full, stride at commit aaa; audiokv at commit bbb, cpu)" in table(merged).splitlines()[0]
    assert "(commit aaa, cpu)" in table(old).splitlines()[0]
    with pytest.raises(ValueError, match=r"another run \(seed 0 != 1\)"):
        merge_results(old, {**new, "seed": 1})
    with pytest.raises(ValueError, match=r"another run \(n 4 != 2\)"):  # --limit 2
        check_same_run(old, {**new, "n": 2})
    check_same_run(old, {**new, "n": 4, "calibration": "c.safetensors"})  # a run without prior policies had none
    with pytest.raises(ValueError, match="not an audiokv eval results file"):
        check_same_run([], new)


def test_report_rewrites_only_the_marked_readme_block():
    from benchmarks.report import fill

    readme = (
        "intro\n<!-- results:x -->\nold table\n<!-- /results -->\noutro\n<!-- results:y -->\nkeep\n<!-- /results -->"
    )
    assert fill(readme, "x", "new") == readme.replace("old table", "new")
    assert fill("<!-- results:x -->\n<!-- /results -->", "x", "t") == "<!-- results:x -->\nt\n<!-- /results -->"
    empty_first = "<!-- results:x -->\n<!-- /results -->\nprose\n<!-- results:y -->\nkeep\n<!-- /results -->"
    assert fill(empty_first, "x", "t") == empty_first.replace("x -->\n", "x -->\nt\n")  # ends at its own end
    with pytest.raises(SystemExit, match="no <!-- results:z -->"):
        fill(readme, "z", "new")


def test_every_results_table_in_the_docs_is_the_report_of_its_committed_file():
    """README and docs tables are produced from benchmarks/results/NAME.json, never typed."""
    import json

    from benchmarks.report import PAGES, blocks, render

    results = PAGES[0].parent / "benchmarks" / "results"
    found = set()
    for page in PAGES:
        for name, body in blocks(page.read_text()):
            result = json.loads((results / f"{name}.json").read_text())
            assert body.strip() == render(name, result), f"{page.name}: block {name} is not its file's table"
            found.add(name)
    assert found == {f.stem for f in results.glob("*.json")}  # and every committed file is shown


def test_rescore_counts_early_stops_only_with_the_references():
    from benchmarks.rescore import rescore

    rows = [{"policy": "a", "wer": 0.5, "repetition_rate": 0.0, "hypotheses": ["the", "the cat sat down"]}]
    rescore({"rows": rows}, "abc")
    assert "short_rate" not in rows[0]  # no manifest here: loops only
    assert rescore({"rows": rows}, "abc", refs=["the cat sat down", "the cat sat down"]) == 1
    assert rows[0]["short_rate"] == 0.5 and rows[0]["wer"] == 0.5


def test_paired_caps_a_loop_at_its_clip_and_names_the_clips_that_loop_or_stop_early():
    from benchmarks.paired import compare

    refs = ["the old ferry crossed the wide river twice every day"] * 4  # 10 words each
    loop = "the sound is very nice " * 6  # 30 words: 30 edits at least after the 10 substitutions
    against = {0.9: {"hypotheses": refs}}
    candidate = {0.9: {"hypotheses": [loop, "the old", refs[2], refs[3]]}}
    (row,) = compare(refs, against, candidate)
    assert row["diff"] > 50  # the loop's insertions count in full
    assert row["capped_diff"] == pytest.approx(100 * (10 + 8) / 40)  # capped: the loop costs its clip's 10 words
    assert (row["better"], row["worse"]) == (0, 2)
    assert (row["loops"], row["short"], row["loops_against"], row["short_against"]) == ([0], [1], [], [])


def test_rescore_recounts_loops_from_the_stored_outputs_only():
    from benchmarks.rescore import rescore

    loop = "the sound is very nice, " * 4  # period 5: the 3-word detector of earlier files missed it
    rows = [
        {"policy": "a", "wer": 0.5, "repetition_rate": 0.0, "hypotheses": [loop, "a clean line"]},
        {"policy": "passkey", "accuracy": 1.0, "repetition_rate": 0.0},  # nothing stored: left alone
    ]
    result = {"rows": rows}
    assert rescore(result, "abc") == 1
    assert [r["repetition_rate"] for r in rows] == [0.5, 0.0] and rows[0]["wer"] == 0.5
    assert result["loops_counted_at"] == "abc"


def test_paired_bootstrap_interval_holds_the_difference_and_shrinks_to_it_when_every_clip_agrees():
    from benchmarks.targets import paired_bootstrap

    words = [10] * 20
    diff, low, high = paired_bootstrap([2] * 20, [1] * 20, words)  # every clip one edit worse: 10 points, no noise
    assert (diff, low, high) == pytest.approx((10.0, 10.0, 10.0))
    diff, low, high = paired_bootstrap([0] * 19 + [20], [0] * 20, words)  # one clip looping: a wide interval
    assert diff == pytest.approx(10.0) and low == 0.0 and high > 20
    voices = [f"v{i % 4}" for i in range(20)]  # the same clips drawn by voice: whole voices come and go
    _, voice_low, voice_high = paired_bootstrap([0] * 19 + [20], [0] * 20, words, groups=voices)
    assert voice_low == 0.0 and voice_high == pytest.approx(30.0)  # 3 of 4 draws the looping voice: 60 / 200 edits
    _, low, high = paired_bootstrap([1, 3] * 10, [0] * 20, words, groups=[f"v{i % 2}" for i in range(20)])
    assert (low, high) == pytest.approx((10.0, 30.0))  # two voices of 10 and 30 points: all of one or the other


def test_targets_compare_with_the_full_cache_and_the_best_baseline_of_each_ratio():
    from benchmarks.report import targets_table
    from benchmarks.targets import check, verdict

    refs = ["red green blue black white"] * 4
    rows = [
        {"policy": "full", "compression_ratio": 0.0, "repetition_rate": 0.0, "hypotheses": refs},
        {"policy": "stride", "compression_ratio": 0.6, "repetition_rate": 0.0, "hypotheses": ["red green"] * 4},
        {"policy": "random", "compression_ratio": 0.6, "repetition_rate": 0.0, "hypotheses": ["red"] * 4},
        {"policy": "audiokv", "compression_ratio": 0.6, "repetition_rate": 0.0, "commit": "abc",
         "hypotheses": ["red green blue black"] * 4},
    ]  # fmt: skip
    (row,) = check({"rows": rows, "commit": "abc"}, refs, ["v1", "v1", "v2", "v2"])
    assert row["vs_full"]["diff"] == pytest.approx(20.0) and row["vs_full"]["allowed"] == 1.0
    assert verdict(row["vs_full"]) == "missed"  # every clip agrees: no noise to hide in
    best = row["vs_best_baseline"]
    assert best["baseline"] == "stride" and best["diff"] == pytest.approx(-40.0) and verdict(best) == "met"
    clips_wide = {"diff": 2.0, "low": -1.0, "high": 5.0, "voice_low": 1.5, "voice_high": 2.5, "allowed": 1.0}
    assert verdict(clips_wide) == "missed (within noise)"  # either interval reaching the allowance is noise
    assert verdict({**clips_wide, "low": 1.5, "high": 2.5, "voice_low": -1.0}) == "missed (within noise)"
    assert verdict({**clips_wide, "low": 1.5}) == "missed"
    assert verdict({**clips_wide, "diff": 0.5}) == "met (within noise)"
    result = {
        "model": "m",
        "source": "f.json",
        "clips": 4,
        "voices": 2,
        "policy": "audiokv",
        "commit": "d",
        "rows": [row],
    }
    table = targets_table(result)
    assert "| 0.6 | +20.0 [+20.0, +20.0] [+20.0, +20.0] | ≤ +1: missed | -40.0 [-40.0, -40.0] [-40.0, -40.0] |" in table
    assert table.splitlines()[-1].endswith("| no loop |")


def test_targets_leave_the_looping_clips_out_of_a_second_difference():
    from benchmarks.report import targets_table
    from benchmarks.targets import check

    refs = ["red green blue black white"] * 4
    looping = "red green " + "the end " * 10
    rows = [
        {"policy": "full", "compression_ratio": 0.0, "repetition_rate": 0.0, "hypotheses": refs},
        {"policy": "audiokv", "compression_ratio": 0.8, "repetition_rate": 0.25, "commit": "abc",
         "hypotheses": ["red green blue black"] * 3 + [looping]},
    ]  # fmt: skip
    (row,) = check({"rows": rows, "commit": "abc"}, refs, ["v1", "v1", "v2", "v2"])
    assert row["looping_clips"] == [3]
    assert row["vs_full"]["diff"] == pytest.approx(100 * (3 + 20) / 20)  # the loop: 3 substituted, 17 inserted
    assert row["vs_full_without_loops"] == pytest.approx(100 * 3 / 15)
    result = {"model": "m", "source": "f.json", "clips": 4, "voices": 2, "policy": "audiokv", "commit": "d"}
    assert targets_table({**result, "rows": [row]}).splitlines()[-1].endswith("| +20.0 (1 left out) |")


def test_targets_pool_the_cells_every_file_holds_over_all_their_clips():
    from benchmarks.targets import check, pool

    def row(policy: str, ratio: float, hyps: list[str], commit: str) -> dict:
        return {"policy": policy, "compression_ratio": ratio, "hypotheses": hyps, "commit": commit}

    a_rows = [row("full", 0.0, ["x y"] * 2, "a"), row("audiokv", 0.6, ["x"] * 2, "a")]
    a_rows += [row("stride", 0.6, ["y"] * 2, "a"), row("tova", 0.6, ["x y"] * 2, "a")]
    b_rows = [row("full", 0.0, ["x y"] * 3, "b"), row("stride", 0.6, ["x y"] * 3, "b")]
    loop = "the sound is very nice " * 6  # 30 words over a 2-word reference: 30 edits
    b_rows += [row("audiokv", 0.6, ["x y"] * 2 + [loop], "b")]
    a, b = ({"model": "m", "data": f"{c}.jsonl", "commit": c, "rows": r} for c, r in (("a", a_rows), ("b", b_rows)))
    pooled = pool([a, b])
    cells = {(r["policy"], r["compression_ratio"]): r for r in pooled["rows"]}
    assert set(cells) == {("full", 0.0), ("audiokv", 0.6), ("stride", 0.6)}  # tova: only in a
    assert cells["audiokv", 0.6]["hypotheses"] == ["x"] * 2 + ["x y"] * 2 + [loop]
    assert cells["full", 0.0]["commit"] == "a, b"
    (checked,) = check(pooled, ["x y"] * 5, ["v1", "v2"] * 2 + ["v1"])
    assert checked["loops"] == pytest.approx(1 / 5)  # counted on the pooled transcripts
    assert checked["vs_full"]["diff"] == pytest.approx(100 * (1 + 1 + 30) / 10)  # a's two deletions, b's loop
    assert checked["vs_best_baseline"]["baseline"] == "stride"
    with pytest.raises(SystemExit, match="one model"):
        pool([a, {**b, "model": "other"}])


def test_files_compared_clip_by_clip_must_hold_their_manifests_clips(tmp_path):
    from benchmarks.paired import main as paired
    from benchmarks.rescore import clips_of, references
    from benchmarks.targets import pool

    lines = [{"audio_filepath": f"{i}.wav", "text": "a b c", "voice": f"v{i % 2}"} for i in range(3)]
    for line in lines:
        (tmp_path / line["audio_filepath"]).touch()
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def result(rows: list[dict], data: object = manifest) -> dict:
        return {"model": "m", "data": str(data), "commit": "c", "rows": rows}

    def row(policy: str, ratio: float, hyps: list[str], **knobs) -> dict:
        return {"policy": policy, "compression_ratio": ratio, "hypotheses": hyps, "knobs": knobs}

    full, ok = row("full", 0.0, ["a b c"] * 3), row("audiokv", 0.6, ["a b"] * 3)
    assert clips_of(result([full, ok])) == (["a b c"] * 3, ["v0", "v1", "v0"])
    short = result([full, row("stride", 0.6, ["a"] * 2)])
    with pytest.raises(SystemExit, match=r"stride has 2 outputs, .* 3 clips"):
        clips_of(short, "f.json")
    assert references(short) is None  # rescore: loops only
    with pytest.raises(SystemExit, match="no tuning knobs"):
        pool([result([full, ok]), result([full, row("audiokv", 0.6, ["a"] * 3, safeguard=0.35)], tmp_path / "x")])
    with pytest.raises(SystemExit, match="different clips"):
        pool([result([full, ok]), result([full, ok])])
    (tmp_path / "a.json").write_text(json.dumps(result([full, ok])))
    with pytest.raises(SystemExit, match="shares a compression ratio"):
        paired([str(tmp_path / "a.json"), "--against", "full"])
    (tmp_path / "b.json").write_text(json.dumps(result([row("full", 0.0, ["a"] * 3), ok])))
    with pytest.raises(SystemExit, match="disagree on the full cache"):
        paired([str(tmp_path / "a.json"), "--against", f"{tmp_path / 'b.json'}:audiokv"])


def test_calib_compare_reads_agreement_and_each_layers_kept_fraction():
    from benchmarks.calib_compare import compare

    a = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.5, 0.4]])
    same = compare(a, a.clone(), [0.8], k=2)
    assert same["rank_correlation"] == pytest.approx(1.0) and same["top_k_shared"] == 2
    keeps = same["layer_keeps"]["0.8"]
    assert keeps["a"] == keeps["b"] and sum(keeps["a"]) / 2 == pytest.approx(0.2)  # the layer split's mean is exact
    assert keeps["a"][1] > keeps["a"][0]  # the layer with the higher mean prior keeps more
    flipped = compare(a, -a, [0.8], k=2)
    assert flipped["rank_correlation"] == pytest.approx(-1.0) and flipped["top_k_shared"] == 0
    assert flipped["layer_rank_correlation"] == pytest.approx([-1.0, -1.0])
    with pytest.raises(ValueError, match="different shapes"):
        compare(a, a[:1], [0.8])
