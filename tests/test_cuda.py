"""The engine on a CUDA device (skipped without one, so on CI): the selection the CPU makes, compiled FlexAttention
over exactly the kept tokens, and Whisper transcription with every input on the model's device."""

import copy

import numpy as np
import pytest
import torch
from reference import KeptReference

from audiokv import AudioKVAttention, AudioKVConfig, apply_audiokv
from audiokv.heads import HeadScores
from audiokv.models.whisper import SpeechModel
from audiokv.transcribe import log_mel, transcribe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def full_fp32():
    """Plain fp32 on the GPU too (no TF32 matmuls or convolutions), so that CPU and GPU pick the same tokens."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def kept_sets(module: AudioKVAttention) -> list[set[int]]:
    bsz, heads = module.budgets.shape
    return [set(module.kept_indices[b, h, : module.budgets[b, h]].tolist()) for b in range(bsz) for h in range(heads)]


@pytest.mark.parametrize("policy", ["audiokv", "audiokv-sss", "snapkv", "adakv", "tova", "expected-attention"])
def test_cross_attention_on_cuda_keeps_the_cpus_tokens_and_attends_over_exactly_them(policy):
    """Two rows of 300 frames: speech, a quiet pause (left out of the sound mask), speech, padding."""
    gen = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(2, 4, n, 16, generator=gen) for n in (3, 300, 300))
    sound = torch.zeros(2, 300, dtype=torch.bool)
    sound[:, :100], sound[:, 160:280] = True, True
    sound[1, 240:] = False  # the second row's sound ends sooner
    cfg = AudioKVConfig(compression_ratio=0.8, page_size=16, sinks=2)
    prior = torch.rand(4, generator=gen)

    def run(device: str) -> AudioKVAttention:
        module = AudioKVAttention(cfg, num_heads=4, num_kv_heads=4, head_dim=16, cross_attention=True,
                                  policy=policy, head_prior=prior, audio_tokens_per_second=50.0).to(device)  # fmt: skip
        module(query.to(device), key.to(device), value.to(device), audio_span=sound.to(device))
        return module

    cpu, gpu = run("cpu"), run("cuda")
    assert gpu.pool.key_pages.is_cuda and gpu.budgets.sum().item() == cpu.budgets.sum().item()
    # float sums in another order may swap a near tie, between tokens or between heads' budgets
    assert (gpu.budgets.cpu() - cpu.budgets).abs().sum() <= 0.01 * cpu.budgets.sum()
    same = sum(len(a & b) for a, b in zip(kept_sets(cpu), kept_sets(gpu), strict=True))
    assert same >= 0.99 * cpu.budgets.sum().item()
    ref = KeptReference(_on_cpu(gpu), key, value, causal=False)
    for _ in range(3):
        q = torch.randn(2, 4, 1, 16, generator=gen)
        got = gpu(q.cuda(), key[:, :, :0].cuda(), value[:, :, :0].cuda())
        torch.testing.assert_close(got.double().cpu(), ref.attend(q), atol=1e-5, rtol=0)


def _on_cpu(module: AudioKVAttention) -> AudioKVAttention:
    """A shallow copy whose selection lives on the CPU, for the CPU reference."""
    view = copy.copy(module)
    view.kept_indices, view.budgets = module.kept_indices.cpu(), module.budgets.cpu()
    return view


class _Digits:
    """A tokenizer stand-in: token ids as text (the random model's vocabulary has no words)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


def _random_whisper() -> SpeechModel:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=200, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, max_source_positions=1500,
        max_target_positions=128, decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=2,
    )  # fmt: skip
    model = WhisperForConditionalGeneration(cfg).eval()
    return SpeechModel("random-whisper", model, WhisperFeatureExtractor(), _Digits(), [1, 5], eos_id=2)


def _speech_with_a_pause(seconds: float = 8.0) -> np.ndarray:
    """Bursts of a voiced-like tone over quiet room tone, with a 1.5 s pause in the middle."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * 16_000)) / 16_000
    bursts = (np.sin(2 * np.pi * 3 * t) > -0.3) & ((t < 3.0) | (t > 4.5))
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 7 * t))
    return (bursts * tone + 1e-3 * rng.standard_normal(len(t))).astype(np.float32)


def test_whisper_transcribes_on_cuda_what_it_transcribes_on_the_cpu():
    """Greedy decoding of a random Whisper under the default policy at 0.7, calibrated, on the CPU and on the GPU."""
    cpu = _random_whisper()
    gpu = SpeechModel(**{**vars(cpu), "model": copy.deepcopy(cpu.model).cuda()})
    audio = [_speech_with_a_pause(), _speech_with_a_pause(5.0)]
    features, sound = log_mel(gpu, audio)
    assert features.is_cuda and sound.is_cuda
    assert (sound[0, 300:450] == 0).float().mean() > 0.5  # the pause is left out of the sound the engine reads
    calib = HeadScores(torch.rand(2, 4, generator=torch.Generator().manual_seed(1)), "random-whisper", "random")
    cfg = AudioKVConfig(compression_ratio=0.7)
    texts, kept = {}, {}
    for name, speech in (("cpu", cpu), ("cuda", gpu)):
        with apply_audiokv(speech.model, cfg, calib) as handle:
            texts[name] = transcribe(speech, audio, max_new_tokens=40)
            kept[name] = [s for engine in handle.engines.values() for s in kept_sets(engine)]
    assert texts["cuda"] == texts["cpu"] and all(texts["cpu"])
    same = sum(len(a & b) for a, b in zip(kept["cpu"], kept["cuda"], strict=True))
    assert same >= 0.99 * sum(map(len, kept["cpu"]))
