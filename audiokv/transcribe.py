"""Speech-to-text with a Whisper-style encoder-decoder (greedy or beam search), in batches; long clips cut at pauses."""

from __future__ import annotations

import numpy as np
import torch

from audiokv.audio import SAMPLE_RATE, speech_frames, split_at_pauses
from audiokv.cache import cache_argument
from audiokv.models.whisper import SpeechModel


def log_mel(speech: SpeechModel, audios: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, mels, 3000]`` Whisper input features (every clip padded to 30 s) and ``[B, 3000]`` their mask of speech,
    on the model's device and (features) in its dtype.

    The mask is the feature extractor's (the real audio, not the padding)
    without the quiet before and between the speech (a lead-in of room tone,
    pauses: :func:`~audiokv.audio.speech_frames`); a quiet tail stays marked.
    Whisper itself ignores it, audiokv reads it (``sound_frames``).
    """
    feats = speech.feature_extractor(audios, sampling_rate=16_000, return_tensors="pt", return_attention_mask=True)
    mask = feats.attention_mask.clone()
    per_frame = SAMPLE_RATE // 50 // speech.feature_extractor.hop_length  # feature frames per 20 ms
    for row, audio in enumerate(audios):
        frames = speech_frames(audio)
        if frames.any():
            end = len(frames) - int(frames[::-1].argmax())  # one past the last frame of speech
            quiet = torch.from_numpy(~frames[:end]).repeat_interleave(per_frame)[: mask.shape[1]]
            mask[row, : len(quiet)] &= ~quiet
    weight = next(speech.model.parameters())
    return feats.input_features.to(weight.device, weight.dtype), mask.to(weight.device)


def transcribe(
    speech: SpeechModel, audios: list[np.ndarray], *, max_new_tokens: int = 200, beams: int = 1
) -> list[str]:
    """Transcribe a batch of 16 kHz clips (no timestamps): greedily, or by beam search with ``beams`` > 1.

    A clip longer than Whisper's 30 s window is cut at pauses
    (:func:`~audiokv.audio.split_at_pauses`); its pieces are decoded in the
    same batch, each with its own cache, and their transcripts joined.
    ``max_new_tokens`` bounds each piece.

    Returns one normalized-whitespace string per clip.
    """
    if not (isinstance(beams, int) and beams >= 1):
        raise ValueError(f"beams must be an integer >= 1, got {beams!r}")
    pieces = [split_at_pauses(audio) for audio in audios]
    flat = [p for clip in pieces for p in clip]
    decoded = (
        _greedy_windows(speech, flat, max_new_tokens)
        if beams == 1
        else _beam_windows(speech, flat, max_new_tokens, beams)
    )
    texts = iter(decoded)
    return [" ".join(t for t in (next(texts) for _ in clip) if t) for clip in pieces]


@torch.no_grad()
def _greedy_windows(speech: SpeechModel, audios: list[np.ndarray], max_new_tokens: int) -> list[str]:
    """Greedy transcripts of clips of at most 30 s, one batch."""
    model = speech.model
    features, sound = log_mel(speech, audios)
    encoder_out = model.model.encoder(features)
    bsz = features.shape[0]
    tokens = torch.tensor([speech.prompt_ids] * bsz, device=features.device)
    done = torch.zeros(bsz, dtype=torch.bool)
    generated: list[list[int]] = [[] for _ in range(bsz)]
    cache_key = cache_argument(model)
    past = None
    step_input = tokens
    for _ in range(max_new_tokens):
        out = model(
            encoder_outputs=encoder_out, attention_mask=sound, decoder_input_ids=step_input, use_cache=True,
            **{cache_key: past},
        )  # fmt: skip
        past = getattr(out, cache_key)
        nxt = out.logits[:, -1].argmax(-1)
        for i, token in enumerate(nxt.tolist()):  # one copy to the host per step
            if not done[i]:
                if token == speech.eos_id:
                    done[i] = True
                else:
                    generated[i].append(token)
        if done.all():
            break
        step_input = nxt[:, None]
    return [speech.tokenizer.decode(g, skip_special_tokens=True).strip() for g in generated]


@torch.no_grad()
def _beam_windows(speech: SpeechModel, audios: list[np.ndarray], max_new_tokens: int, beams: int) -> list[str]:
    """Beam-search transcripts of clips of at most 30 s, one batch (transformers' ``generate``).

    The prompt and the mask of speech are the greedy loop's, so with one beam
    it gives the same tokens; whatever cache ``apply_audiokv`` installed is
    reordered between beams by ``generate``.
    """
    features, sound = log_mel(speech, audios)
    prompt = torch.tensor([speech.prompt_ids] * features.shape[0], device=features.device)
    out = speech.model.generate(
        input_features=features, attention_mask=sound, decoder_input_ids=prompt, num_beams=beams, do_sample=False,
        max_length=len(speech.prompt_ids) + max_new_tokens, eos_token_id=speech.eos_id,
    )  # fmt: skip
    return [text.strip() for text in speech.tokenizer.batch_decode(out, skip_special_tokens=True)]
