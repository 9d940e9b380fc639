"""Calibration: run a model on ASR data and score every (layer, KV head) for audio alignment."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from tqdm.auto import tqdm

from audiokv.dataset import Utterance
from audiokv.heads import HeadScores, alignment_score, group_heads
from audiokv.models.whisper import SpeechModel
from audiokv.transcribe import log_mel

FRAMES_PER_SECOND = 50  # Whisper's encoder output rate: 1,500 frames for 30 s


@torch.no_grad()
def whisper_cross_attention(speech: SpeechModel, utt: Utterance) -> list[Tensor]:
    """Teacher-forced cross-attention of the transcript over the speech frames, per decoder layer.

    Returns:
        One ``[H, N, F]`` tensor per decoder layer: row ``i`` is the attention of
        the query that emits transcript token ``i`` (and finally end-of-text)
        over the ``F`` encoder frames that hold speech (padding frames left out,
        so attention spent on them lowers the head's score).
    """
    audio = utt.audio()
    text_ids = speech.tokenizer.encode(" " + utt.text, add_special_tokens=False)
    ids = torch.tensor([speech.prompt_ids + text_ids])
    out = speech.model(input_features=log_mel(speech, [audio]), decoder_input_ids=ids, output_attentions=True)
    frames = min(math.ceil(len(audio) / 16_000 * FRAMES_PER_SECOND), out.cross_attentions[0].shape[-1])
    rows = slice(len(speech.prompt_ids) - 1, ids.shape[1])  # queries emitting text tokens and end-of-text
    return [layer[0, :, rows, :frames].float() for layer in out.cross_attentions]


def calibrate_whisper(speech: SpeechModel, data: list[Utterance], *, progress: bool = True) -> HeadScores:
    """Alignment score of every decoder cross-attention head, averaged over ``data``.

    Whisper's compressed cache is the decoder's cross-attention cache over the
    encoder frames, so these are the heads whose budgets the scores steer.
    """
    if not data:
        raise ValueError("calibration needs at least one utterance")
    total = None
    for utt in tqdm(data, desc=f"calibrating {speech.name}", disable=not progress, unit="clip"):
        per_layer = torch.stack([alignment_score(a) for a in whisper_cross_attention(speech, utt)])
        total = per_layer if total is None else total + per_layer
    heads = speech.model.config.decoder_attention_heads
    scores = group_heads(total / len(data), heads)  # cross-attention is multi-head: one KV head per head
    return HeadScores(scores, model=speech.name, data=f"{len(data)} utterances")
