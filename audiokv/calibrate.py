"""Calibration: run a model on ASR data and score every (layer, KV head) for audio alignment.

Two runners feed the same score (:func:`audiokv.heads.alignment_score`):

- Whisper-style encoder-decoders: the decoder's cross-attention over the
  encoder frames (:func:`calibrate_whisper`);
- decoder-only LALMs: the self-attention of the transcript tokens over the
  audio placeholder tokens of the same sequence (:func:`calibrate_decoder`).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from audiokv.audio import SAMPLE_RATE
from audiokv.dataset import Utterance
from audiokv.heads import METHOD, TIMED_METHOD, HeadScores, alignment_score, group_heads, timed_alignment_score
from audiokv.integrations.apply import attention_modules, audio_tokens, set_attention_implementation
from audiokv.integrations.families import audio_token_id, family_of
from audiokv.models.whisper import SpeechModel
from audiokv.spectral import clip_ids, mask_spans
from audiokv.transcribe import log_mel

FRAMES_PER_SECOND = 50  # Whisper's encoder output rate: 1,500 frames for 30 s
CALIBRATION_RECIPE = "calib_timed clips, v1"  # what cached_whisper_calibration runs: a new recipe, a new cache file


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
    if len(audio) > 30 * SAMPLE_RATE:
        seconds = len(audio) / SAMPLE_RATE
        raise ValueError(f"calibration clips must fit Whisper's 30 s window; {utt.audio_path} lasts {seconds:.1f} s")
    text_ids = speech.tokenizer.encode(" " + utt.text, add_special_tokens=False)
    features = log_mel(speech, [audio])[0]
    ids = torch.tensor([speech.prompt_ids + text_ids], device=features.device)
    out = speech.model(input_features=features, decoder_input_ids=ids, output_attentions=True)
    frames = min(math.ceil(len(audio) / 16_000 * FRAMES_PER_SECOND), out.cross_attentions[0].shape[-1])
    rows = slice(len(speech.prompt_ids) - 1, ids.shape[1])  # queries emitting text tokens and end-of-text
    return [layer[0, :, rows, :frames].float().cpu() for layer in out.cross_attentions]


def word_frames(speech: SpeechModel, utt: Utterance) -> Tensor:
    """``[N, 2]`` encoder frames ``[start, end)`` of the word each transcript token belongs to (needs ``utt.words``)."""
    text = " " + utt.text
    enc = speech.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    spans = []
    for _, end in enc["offset_mapping"]:
        word = max(0, bisect.bisect_right(starts, max(end - 1, 0)) - 1)  # the word holding the token's last character
        begin, finish = utt.words[word]
        lo = math.floor(begin * FRAMES_PER_SECOND)
        spans.append((lo, max(lo + 1, math.ceil(finish * FRAMES_PER_SECOND))))
    return torch.tensor(spans)


def _mean_scores(per_sample: Iterable[Tensor | None], count: int, desc: str, progress: bool) -> tuple[Tensor, int]:
    """The mean of ``count`` samples' ``[num_layers, H_q]`` head scores (None: skipped), and how many counted."""
    if count == 0:
        raise ValueError("calibration needs at least one sample")
    scored = [s for s in tqdm(per_sample, total=count, desc=desc, disable=not progress, unit="clip") if s is not None]
    if not scored:
        raise ValueError(f"none of the {count} calibration samples could be scored (each was skipped, see above)")
    return sum(scored) / len(scored), len(scored)


def calibrate_whisper(
    speech: SpeechModel, data: list[Utterance], *, method: str = METHOD, progress: bool = True
) -> HeadScores:
    """Alignment score of every decoder cross-attention head, averaged over ``data``.

    Whisper's compressed cache is the decoder's cross-attention cache over the
    encoder frames, so these are the heads whose budgets the scores steer.

    Args:
        method: ``METHOD`` (sharpness x monotonicity x mass, the budget prior)
            or ``TIMED_METHOD`` (standardized attention on the current and next
            word, :func:`audiokv.heads.timed_alignment_score`; needs word timings
            on every utterance). The timed score finds the heads Whisper uses
            for word timestamps; as a budget prior it does worse (README).
    """
    if method not in (METHOD, TIMED_METHOD):
        raise ValueError(f"method must be {METHOD!r} or {TIMED_METHOD!r}, got {method!r}")
    timed = method == TIMED_METHOD
    if timed and not all(u.words is not None for u in data):
        raise ValueError(f"{TIMED_METHOD} needs word timings ('words' in the manifest) for every utterance")

    def score(utt: Utterance) -> Tensor | None:
        layers = whisper_cross_attention(speech, utt)
        tokens, frames = layers[0].shape[1] - 1, layers[0].shape[2]  # the last row emits end-of-text
        if tokens < 2 or frames < 2:  # e.g. a one-word answer ("YES"), or a clip of 0.02 s
            warnings.warn(
                f"calibration skips {utt.audio_path}: {tokens} transcript token(s) over {frames} encoder frame(s) "
                "of speech; its heads' alignment needs at least 2 of each",
                stacklevel=2,
            )
            return None
        if timed:
            spans = word_frames(speech, utt)
            return torch.stack([timed_alignment_score(a[:, :-1], spans) for a in layers])  # without end-of-text
        return torch.stack([alignment_score(a) for a in layers])

    mean, used = _mean_scores(map(score, data), len(data), f"calibrating {speech.name}", progress)
    heads = speech.model.config.decoder_attention_heads
    scores = group_heads(mean, heads)  # cross-attention is multi-head: one KV head per head
    return HeadScores(scores, model=speech.name, data=f"{used} utterance{'s' * (used != 1)}", method=method)


CAPTURE = "audiokv_capture"


def _capture(records: dict[int, Tensor], targets: dict[int, nn.Module], rows: slice, columns: slice):
    """An attention implementation that also keeps ``weights[0, :, rows, columns]`` of the target layers."""
    ids = {id(m) for m in targets.values()}

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if id(module) not in ids:  # e.g. the audio encoder's layers
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        bsz, heads, q_len, dim = query.shape
        kv_heads, k_len = key.shape[1], key.shape[2]
        grouped = query.float().reshape(bsz, kv_heads, heads // kv_heads * q_len, dim)  # GQA without repeat_kv
        logits = (grouped @ key.float().transpose(-1, -2)).view(bsz, heads, q_len, k_len) * scaling
        if attention_mask is None:  # SDPA's mask function leaves plain causal masks implicit
            causal = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
            logits = logits.masked_fill(~causal, float("-inf"))
        elif attention_mask.dtype == torch.bool:
            logits = logits.masked_fill(~attention_mask, float("-inf"))
        else:
            logits = logits + attention_mask
        weights = logits.softmax(-1)
        records[module.layer_idx] = weights[0, :, rows, columns]
        out = weights.view(bsz, kv_heads, -1, k_len) @ value.float()
        return out.view(bsz, heads, q_len, dim).to(query.dtype).transpose(1, 2).contiguous(), None

    return attention


@torch.no_grad()
def decoder_audio_attention(model: nn.Module, inputs: dict, text_start: int) -> list[Tensor]:
    """Teacher-forced self-attention of a transcript over the audio tokens, per decoder layer.

    Args:
        model: a decoder-only LALM of a supported family.
        inputs: the model's inputs for one sample (batch 1): ``input_ids`` holding
            the audio placeholder tokens, then the transcript from ``text_start``
            to the end, plus the audio features.
        text_start: position of the first transcript token.

    Returns:
        One ``[H_q, N, F]`` tensor per layer: row ``i`` is the attention of the
        query that emits transcript token ``i`` over the ``F`` audio tokens.
    """
    family = family_of(model)
    ids = inputs["input_ids"]
    if ids.shape[0] != 1:
        raise ValueError(f"calibration runs one sample at a time, got a batch of {ids.shape[0]}")
    token = audio_token_id(model, family)
    audio = audio_tokens(ids, token)
    if audio is None:
        raise ValueError(f"the sample has no audio placeholder tokens (id {token}): the audio span is empty")
    if clip_ids(audio).amax() > 1:
        raise ValueError("the sample holds text between audio placeholders: calibration aligns one clip at a time")
    start, end = mask_spans(audio)[0].tolist()
    if not end <= text_start <= ids.shape[1] - 3:
        raise ValueError(
            f"the transcript must follow the audio (which ends at {end}) and hold at least 3 tokens; "
            f"got text_start={text_start} in a sequence of {ids.shape[1]}"
        )
    records: dict[int, Tensor] = {}
    modules = attention_modules(model, family.attention)
    rows, columns = slice(text_start - 1, ids.shape[1] - 1), slice(start, end)
    AttentionInterface.register(CAPTURE, _capture(records, modules, rows, columns))
    ALL_MASK_ATTENTION_FUNCTIONS.register(CAPTURE, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    restore = set_attention_implementation(model, modules.values(), CAPTURE)
    try:
        model(**inputs, use_cache=False)
    finally:
        for config, impl in restore:
            config._attn_implementation = impl
    return [records[idx] for idx in modules]


def calibrate_decoder(
    model: nn.Module, samples: Iterable[tuple[dict, int]], *, name: str, progress: bool = True
) -> HeadScores:
    """Alignment score of every (layer, KV head) of a decoder-only LALM, averaged over ``samples``.

    Args:
        model: the LALM (any supported decoder-only family).
        samples: ``(inputs, text_start)`` pairs as in :func:`decoder_audio_attention`,
            typically the processor's output for an ASR prompt with the reference
            transcript appended.
        name: the model's name, stored in the file (loading checks it).

    Returns:
        ``[num_layers, num_kv_heads]`` scores: query heads of a GQA group are averaged.
    """
    samples = list(samples)
    per_sample = (
        torch.stack([alignment_score(a) for a in decoder_audio_attention(model, inputs, text_start)])
        for inputs, text_start in samples
    )
    mean, _ = _mean_scores(per_sample, len(samples), f"calibrating {name}", progress)
    text = model.config.get_text_config(decoder=True)
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return HeadScores(group_heads(mean, kv_heads), model=name, data=f"{len(samples)} samples")


def calibration_cache(speech: SpeechModel) -> Path:
    """The file a model's scores are cached in, under ``$AUDIOKV_CACHE`` (else ``~/.cache/audiokv``).

    Named after the model and a fingerprint of its decoder weights and of the
    recipe, so two models called ``model`` (two CTranslate2 folders) or a new
    recipe never share a file.
    """
    digest = hashlib.sha1(f"{METHOD} {CALIBRATION_RECIPE}".encode())
    for name, param in speech.model.get_decoder().named_parameters():
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(param.detach().flatten()[:64].float().numpy().tobytes())
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    root = Path(os.environ.get("AUDIOKV_CACHE") or cache_home / "audiokv")
    slug = re.sub(r"[^\w.-]+", "--", speech.name.strip("/"))
    return root / "calibration" / f"{slug}-{digest.hexdigest()[:12]}.safetensors"


def cached_whisper_calibration(speech: SpeechModel, *, progress: bool = True) -> tuple[HeadScores, Path]:
    """Head scores of a Whisper model that ships none: calibrated once on the bundled clips, then read back.

    The bundled clips (:data:`audiokv.data.CALIB_TIMED_DIR`) and score are those
    the shipped files were made with, so a bundled model calibrated this way
    gets its shipped scores back. Returns the scores and the file they are in.
    """
    from audiokv.data import CALIB_TIMED_DIR
    from audiokv.dataset import load_speech_set

    path = calibration_cache(speech)
    cfg = speech.model.config
    shape = dict(num_layers=cfg.decoder_layers, num_kv_heads=cfg.decoder_attention_heads)
    if path.is_file():
        return HeadScores.load(path, model=speech.name, **shape), path
    data = load_speech_set(CALIB_TIMED_DIR / "manifest.jsonl")
    print(f"audiokv: no calibration ships for {speech.name}: calibrating it on the {len(data)} bundled clips "
          f"(once; saved to {path})", file=sys.stderr)  # fmt: skip
    scores = calibrate_whisper(speech, data, progress=progress)
    scores.data = f"{len(data)} utterances from the bundled {CALIB_TIMED_DIR.name} clips"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial")
    scores.save(partial)
    os.replace(partial, path)  # another process never reads half a file
    return scores, path
