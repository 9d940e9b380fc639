import json

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st

from audiokv.audio import load_audio, resample, speech_frames, split_at_pauses, write_wav
from audiokv.dataset import load_speech_set
from audiokv.metrics import normalize_text, word_error_rate


def tone(seconds, rate, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def test_resampling_keeps_length_pitch_and_level():
    y = resample(tone(1.0, 22_050), 22_050, 16_000)
    assert abs(len(y) - 16_000) <= 1
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over one second
    assert abs(y[100:-100].std() - 0.5 / np.sqrt(2)) < 0.01


def test_a_long_clip_is_cut_in_its_pauses():
    rate = 16_000
    speech = np.random.default_rng(0).normal(0, 0.3, 70 * rate)
    gaps = [(27.0, 27.3), (55.5, 55.8)]  # quiet inside the last 5 s before each 30 s limit
    for a, b in gaps:
        speech[int(a * rate) : int(b * rate)] *= 1e-3
    pieces = split_at_pauses(speech)
    assert len(pieces) == 3 and np.array_equal(np.concatenate(pieces), speech)
    cuts = np.cumsum([len(p) for p in pieces])[:-1] / rate
    assert all(a < cut < b for cut, (a, b) in zip(cuts, gaps, strict=True))
    assert len(split_at_pauses(speech[: 30 * rate])) == 1  # a clip that fits stays whole
    with pytest.raises(ValueError, match="search_seconds"):
        split_at_pauses(speech, max_seconds=5.0, search_seconds=5.0)


@pytest.mark.parametrize("level", [1e-3, 0.05])  # -60 dBFS, and 17 dB under the tone (over 30 dB: not loud)
def test_speech_frames_leave_out_a_quiet_lead_in_and_long_pauses(level):
    rng = np.random.default_rng(0)
    speech = tone(3.0, 16_000)

    def room(seconds):
        return rng.normal(0, level, int(seconds * 16_000))

    clip = [room(1.5), speech + room(3), room(1.0), speech + room(3), room(0.3), speech]
    frames = speech_frames(np.concatenate(clip))
    assert len(frames) == (1.5 + 3 + 1 + 3 + 0.3 + 3) * 50
    quiet = np.flatnonzero(~frames)
    lead, pause = quiet[quiet < 75], quiet[quiet >= 75]
    assert lead.tolist() == list(range(65))  # up to 0.2 s (10 frames) before the tone
    assert pause.tolist() == list(range(225 + 10, 275 - 10))  # 1 s pause, less 0.2 s on each side; 0.3 s: none
    assert speech_frames(speech).all() and len(speech_frames(np.zeros(100))) == 0
    assert len(speech_frames(tone(0.1, 16_000))) == 5  # a clip shorter than the margins: one flag per 20 ms


def test_speech_frames_count_noise_that_rises_and_falls_as_sound():
    rng = np.random.default_rng(0)
    swell = 0.05 * (1.5 + np.sin(np.linspace(0, 12 * np.pi, 24_000)))  # 1.5 s of noise swelling 3 times a second
    assert speech_frames(np.concatenate([rng.normal(0, 1, 24_000) * swell, tone(3.0, 16_000)])).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 4000), st.integers(3, 12), st.integers(1, 2))
def test_pieces_fit_the_window_and_add_up_to_the_clip(length, max_seconds, search_seconds):
    audio = np.random.default_rng(length).normal(size=length).astype(np.float32)
    pieces = split_at_pauses(audio, max_seconds, search_seconds, sample_rate=100)  # 2 samples per 20 ms
    assert np.array_equal(np.concatenate(pieces), audio)
    assert all(len(p) <= max_seconds * 100 for p in pieces)
    assert all(len(p) >= (max_seconds - search_seconds) * 100 for p in pieces[:-1])


FORMATS = [(".wav", "PCM_24"), (".flac", "PCM_16"), (".ogg", "VORBIS"), (".mp3", None)]


@pytest.mark.parametrize(("suffix", "subtype"), FORMATS)
def test_every_format_reads_as_16khz_mono(tmp_path, suffix, subtype):
    left = tone(1.0, 44_100)
    stereo = np.stack([left, np.full_like(left, 0.25)], 1)  # a 440 Hz tone and an offset
    soundfile.write(tmp_path / f"s{suffix}", stereo, 44_100, subtype=subtype)
    mono = load_audio(tmp_path / f"s{suffix}")
    assert abs(len(mono) - 16_000) <= 1200  # mp3 pads with encoder delay
    assert abs(mono.mean() - 0.125) < 0.01
    spectrum = np.abs(np.fft.rfft(mono[:16_000] - mono[:16_000].mean()))
    assert abs(np.argmax(spectrum) * 16_000 / len(mono[:16_000]) - 440) <= 2


def test_librispeech_layout(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    for utt in ("84-121123-0000", "84-121123-0001"):
        soundfile.write(chapter / f"{utt}.flac", tone(0.2, 16_000), 16_000)
    (chapter / "84-121123-0000.trans.txt").write_text("84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS\n")
    (tmp_path / "LibriSpeech" / "README.TXT").write_text("not a transcript")
    data = load_speech_set(tmp_path / "LibriSpeech")
    assert [(u.audio_path.name, u.text) for u in data] == [
        ("84-121123-0000.flac", "GO DO YOU HEAR"),
        ("84-121123-0001.flac", "BUT IN LESS"),
    ]
    (chapter / "84-121123-0000.trans.txt").write_text("84-121123-0009 NO AUDIO\n")
    with pytest.raises(ValueError, match=r"trans\.txt:1: expected '<id> <transcript>'"):
        load_speech_set(tmp_path)


def test_folder_and_manifest(tmp_path):
    for name, text in [("a", "hello there"), ("b", "general kenobi")]:
        write_wav(tmp_path / f"{name}.wav", tone(0.2, 16_000))
        (tmp_path / f"{name}.txt").write_text(text + "\n")
    folder = load_speech_set(tmp_path)
    assert [u.text for u in folder] == ["hello there", "general kenobi"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"audio_filepath": f"{n}.wav", "text": n}) for n in "ab") + "\n")
    assert [u.audio_path.name for u in load_speech_set(manifest, limit=1)] == ["a.wav"]
    timed = tmp_path / "t.jsonl"
    timed.write_text(json.dumps({"audio_filepath": "a.wav", "text": "hello there", "words": [[0, 0.1], [0.1, 0.2]]}))
    assert load_speech_set(timed)[0].words == ((0.0, 0.1), (0.1, 0.2))
    timed.write_text(json.dumps({"audio_filepath": "a.wav", "text": "hello there", "words": [[0, 0.1]]}))
    with pytest.raises(ValueError, match=r"t\.jsonl:1: 'words' has 1 spans for 2 words"):
        load_speech_set(timed)


def test_bad_data_errors_name_the_file(tmp_path):
    write_wav(tmp_path / "x.wav", tone(0.1, 16_000))
    with pytest.raises(ValueError, match=r"missing transcript .*x\.txt"):
        load_speech_set(tmp_path)
    (tmp_path / "m.jsonl").write_text('{"audio_filepath": "nope.wav", "text": "t"}\n')
    with pytest.raises(ValueError, match=r"nope\.wav does not exist"):
        load_speech_set(tmp_path / "m.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"text": "t"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        load_speech_set(tmp_path / "bad.jsonl")
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / "broken.wav").write_bytes(b"RIFF nonsense")
    (tmp_path / "broken.txt").write_text("x")
    with pytest.raises(ValueError, match=r"cannot read audio file .*broken\.wav"):
        load_speech_set(tmp_path)[0].audio()


def test_a_manifest_text_that_is_not_a_string_is_refused(tmp_path):
    (tmp_path / "null.jsonl").write_text('{"audio_filepath": "a.wav", "text": null}\n')  # was the reference "None"
    write_wav(tmp_path / "a.wav", tone(0.1, 16_000))
    with pytest.raises(ValueError, match=r"null\.jsonl:1: .*'text' is None, not a string"):
        load_speech_set(tmp_path / "null.jsonl")


def test_an_audio_file_given_as_a_speech_set_is_named_as_such(tmp_path):
    write_wav(tmp_path / "a.wav", tone(0.1, 16_000))
    with pytest.raises(ValueError, match=r"a\.wav is an audio file"):  # was a UTF-8 decode error
        load_speech_set(tmp_path / "a.wav")


def test_manifests_are_utf8_with_or_without_a_byte_order_mark(tmp_path):
    write_wav(tmp_path / "a.wav", tone(0.1, 16_000))
    line = '{"audio_filepath": "a.wav", "text": "caf\u00e9"}\n'
    (tmp_path / "bom.jsonl").write_text(line, encoding="utf-8-sig")
    assert load_speech_set(tmp_path / "bom.jsonl")[0].text == "caf\u00e9"
    (tmp_path / "latin.jsonl").write_bytes(line.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.jsonl is not UTF-8 text"):
        load_speech_set(tmp_path / "latin.jsonl")


def test_audio_with_nan_samples_is_refused_by_name(tmp_path):
    samples = tone(0.1, 16_000).astype(np.float32)
    samples[100] = np.nan
    soundfile.write(tmp_path / "nan.wav", samples, 16_000, subtype="FLOAT")
    with pytest.raises(ValueError, match=r"nan\.wav holds NaN or infinite samples"):
        load_audio(tmp_path / "nan.wav")


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Hello, World!", "hello world"),
        ("Twenty or 15 minutes", "20 or 15 minutes"),  # Whisper's normalizer writes numbers as digits
        ("It's well-known, Mr. Smith: uh, 'quotes'.", "it is well known mister smith quotes"),
    ],
)
def test_normalization_is_whispers(raw, normal):
    assert normalize_text(raw) == normal


def test_word_error_rate_counts_edits_over_reference_words():
    assert word_error_rate(["the cat sat"], ["The cat sat."]) == 0
    assert word_error_rate(["the cat sat", "a b"], ["the dog sat down", "a"]) == pytest.approx(3 / 5)
    assert word_error_rate(["twenty five cats", ""], ["25 cats", "hmm no"]) == pytest.approx(1 / 2)  # 'hmm': a filler
    with pytest.raises(ValueError, match="no words"):
        word_error_rate([""], ["x"])
