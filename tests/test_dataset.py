import json

import numpy as np
import pytest

from audiokv.audio import load_audio, read_wav, resample, write_wav
from audiokv.dataset import load_speech_set
from audiokv.metrics import normalize_text, word_error_rate


def tone(seconds, rate, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


def test_resampling_keeps_length_pitch_and_level():
    y = resample(tone(1.0, 22_050), 22_050, 16_000)
    assert len(y) == 16_000
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) - 440) <= 1  # 1 Hz bins over one second
    assert abs(y[100:-100].std() - 0.5 / np.sqrt(2)) < 0.01


def test_stereo_is_mixed_down_and_resampled(tmp_path):
    import wave

    left, right = tone(0.5, 8_000), -tone(0.5, 8_000) * 0 + 0.25
    pcm = (np.stack([left, np.full_like(left, right)], 1) * 32767).astype("<i2")
    with wave.open(str(tmp_path / "s.wav"), "wb") as f:
        f.setnchannels(2), f.setsampwidth(2), f.setframerate(8_000)
        f.writeframes(pcm.tobytes())
    data, rate = read_wav(tmp_path / "s.wav")
    assert data.shape == (4_000, 2) and rate == 8_000
    mono = load_audio(tmp_path / "s.wav")
    assert len(mono) == 8_000 and abs(mono.mean() - 0.125) < 0.01


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


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Hello, World!", "hello world"),
        ("Ten or 15 minutes", "ten or fifteen minutes"),
        ("It's 342 well-known 'quotes'.", "it's three hundred forty two well known quotes"),
    ],
)
def test_normalization(raw, normal):
    assert normalize_text(raw) == normal


def test_word_error_rate_counts_edits_over_reference_words():
    assert word_error_rate(["the cat sat"], ["The cat sat."]) == 0
    assert word_error_rate(["the cat sat", "a b"], ["the dog sat down", "a"]) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="no words"):
        word_error_rate([""], ["x"])
