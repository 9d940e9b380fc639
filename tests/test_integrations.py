"""apply_audiokv on tiny random transformers models (built offline from their configs)."""

import itertools
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from calls import cache_in, cached
from reference import kept_prompt
from torch import nn
from transformers import (
    AttentionInterface,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from audiokv import AudioKVConfig
from audiokv.cache import AudioKVCache, AudioKVEncoderDecoderCache, cache_argument
from audiokv.heads import HeadScores
from audiokv.integrations import SUPPORTED_FAMILIES, apply_audiokv
from audiokv.integrations.apply import NoCalibrationWarning, layer_stack
from audiokv.integrations.chunked import chunk_bounds
from audiokv.passkey import dense_kv_bytes
from audiokv.spectral import mask_spans

COMMON = dict(
    vocab_size=97,
    hidden_size=96,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
)
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**COMMON)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**COMMON)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**COMMON)),  # qk-norm
}


def tiny(family):
    torch.manual_seed(0)
    return FAMILIES[family]().eval()


def left_padded(bsz, length, gen):
    ids = torch.randint(3, 97, (bsz, length), generator=gen)
    mask = torch.ones(bsz, length, dtype=torch.long)
    for row in range(1, bsz):
        mask[row, : 7 * row] = 0
        ids[row, : 7 * row] = 0
    return ids, mask


@pytest.mark.parametrize("policy", ["audiokv", "snapkv", "h2o"])
def test_a_row_shorter_than_the_window_decodes_in_a_batch_as_it_does_alone(policy):
    """Its left padding fills the window with queries that see no key: they must not vote (their softmax is NaN).

    A row under the window is kept whole, so this checks that the batch decodes at all, and as the rows do
    alone; what the other queries score is checked against the reference loop in test_scoring.
    """
    model = tiny("qwen2")
    ids = torch.randint(3, 97, (2, 100), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 100, dtype=torch.long)
    mask[1, :80], ids[1, :80] = 0, 0  # 20 tokens, under the window of 32
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.5), policy=policy):
        both = torch.stack(model.generate(ids, attention_mask=mask, **greedy).logits, 1)
        alone = torch.stack(model.generate(ids[1:, 80:], **greedy).logits, 1)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("bsz", [1, 3])
def test_ratio_zero_is_identical_to_the_unpatched_model(family, bsz):
    model = tiny(family)
    ids, mask = left_padded(bsz, 60, torch.Generator().manual_seed(bsz))
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    ref_logits = model(ids, attention_mask=mask).logits
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, page_size=16)):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
        logits = model(ids, attention_mask=mask).logits
    assert torch.equal(out, ref)
    valid = mask.bool()
    torch.testing.assert_close(logits[valid], ref_logits[valid], atol=1e-5, rtol=0)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False), ref)


def merge_runs(audio, window):
    """Each row's stretches of ``[B, T]`` bool ``audio`` whose tokens merge: its one clip, or with text between its
    clips each clip's part before the observation window (the last ``window`` tokens are kept whole)."""
    runs = []
    for row in audio.tolist():
        starts = [t for t, a in enumerate(row) if a and (t == 0 or not row[t - 1])]
        ends = [t + 1 for t, a in enumerate(row) if a and (t + 1 == len(row) or not row[t + 1])]
        ahead = len(row) - window
        if len(starts) == 1:
            runs.append([(starts[0], ends[0])])
        else:
            runs.append([(s, min(e, ahead)) for s, e in zip(starts, ends, strict=True) if s < ahead])
    return runs


def kept_state(engines, length, chunks=None):
    """What each compressed layer kept: ``{layer: (indices, budgets, prompt_len, audio, key_mask, merge, chunks)}``.

    ``audio``: ``([B, T]`` bool audio tokens, the observation window); ``chunks``: the
    ``(start, end)`` chunks the prompt was prefilled in (default: one).
    """
    state = {}
    for i, e in engines.items():
        bsz = e.kept_indices.shape[0]
        audio = torch.zeros(bsz, length, dtype=torch.bool)
        if e.cross_attention:  # every encoder frame is audio
            audio[:] = True
        elif e.prompt.audio_span is not None:
            audio = e.prompt.audio_span
        state[i] = (
            e.kept_indices,
            e.budgets,
            length,
            (audio, e.config.window),
            e.prompt.key_mask,
            e.policy.merge,
            chunks or [(0, length)],
        )
    return state


def _compressed_prompt(key, value, kept):
    """The prompt as the layer kept it: ``key``/``value`` with the kept tokens merged, and a ``[B, H_kv, T]`` key bias.

    The bias is -inf on dropped prompt tokens, the log mass on kept ones and 0
    after the prompt. Each prefill chunk was compressed alone: its tokens merge
    within its own audio (:func:`merge_runs`).
    """
    idx, budgets, _, (audio, window), key_mask, merge, chunks = kept
    key, value = key.clone(), value.clone()
    bias = torch.zeros(key.shape[:3])
    runs = {(s, e): merge_runs(audio[:, s:e], window) for s, e in chunks}
    for b, h, (s, e) in itertools.product(range(key.shape[0]), range(key.shape[1]), chunks):
        valid = None if key_mask is None else key_mask[b, s:e]
        mine = idx[b, h, : budgets[b, h]]
        key[b, h, s:e], value[b, h, s:e], bias[b, h, s:e] = kept_prompt(
            key[b, h, s:e], value[b, h, s:e], mine[(mine >= s) & (mine < e)] - s,
            runs[s, e][b], valid, merge,
        )  # fmt: skip
    return key, value, bias


def _masked_reference(kept):
    """Unpatched SDPA attention over the full cache, limited to exactly the prompt tokens audiokv kept (merged).

    ``kept`` is :func:`kept_state`; layers not in it run plain SDPA. Queries
    after the compressed prompt see only what it kept; a prompt prefilled in
    chunks sees, chunk by chunk, what the earlier chunks kept and its own chunk.
    """

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if getattr(module, "layer_idx", None) not in kept:  # e.g. an audio encoder's attention (transformers 5.2)
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        bsz, heads, q_len, _ = query.shape
        total, kv_heads = key.shape[2], key.shape[1]
        state = kept[module.layer_idx]

        def sdpa(rows, k, v, key_bias):
            """Queries ``rows`` over ``k``/``v`` (the first keys), the model's own mask plus ``key_bias``."""
            cols = torch.arange(k.shape[2])
            if attention_mask is None:
                allow = (cols[None, :] <= total - q_len + rows[:, None]).expand(bsz, kv_heads, -1, -1)
            else:  # the model's own mask: causal and padding
                allow = attention_mask[:, :, rows][..., cols].bool().expand(bsz, kv_heads, -1, -1)
            b = torch.where(allow, key_bias[:, :, None, : k.shape[2]], float("-inf"))
            b = b.repeat_interleave(heads // kv_heads, dim=1)
            return F.scaled_dot_product_attention(query[:, :, rows], k, v, attn_mask=b, scale=scaling, enable_gqa=True)

        ck, cv, cbias = _compressed_prompt(key, value, state)
        if len(state[-1]) > 1 and q_len == total:  # prefill in chunks
            parts = []
            for s, e in state[-1]:
                k, v = torch.cat([ck[:, :, :s], key[:, :, s:e]], 2), torch.cat([cv[:, :, :s], value[:, :, s:e]], 2)
                parts.append(
                    sdpa(torch.arange(s, e), k, v, torch.cat([cbias[:, :, :s], torch.zeros(bsz, kv_heads, e - s)], -1))
                )
            out = torch.cat(parts, 2)
        else:  # the prompt's own queries see it whole (prefill)
            out = sdpa(torch.arange(q_len), key, value, torch.zeros(bsz, kv_heads, total))
        late = total - q_len + torch.arange(q_len) >= state[2]  # queries after the compressed prompt
        if late.any():  # see only the prompt tokens the compressed layer kept (merged)
            out = torch.where(late[:, None], sdpa(torch.arange(q_len), ck, cv, cbias), out)
        return out.transpose(1, 2).contiguous(), None

    return attention


def generate_with_reference(model, kept, set_impl, **inputs):
    """``model.generate(**inputs)`` with the unpatched model's attention limited to the ``kept`` tokens."""
    AttentionInterface.register("masked_reference", _masked_reference(kept))
    ALL_MASK_ATTENTION_FUNCTIONS.register("masked_reference", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    set_impl(model, "masked_reference")
    try:
        return model.generate(**inputs)
    finally:
        set_impl(model, "sdpa")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_half_compression_holds_half_the_memory_and_matches_masked_attention(family):
    model = tiny(family)
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 97, (1, 800), generator=gen)
    dense = DynamicCache(config=model.config)
    model(ids, **cached(model, dense), use_cache=True)
    dense_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in dense.layers)

    cfg = AudioKVConfig(compression_ratio=0.5, window=16, page_size=16, decode_reserve=0)
    handle = apply_audiokv(model, cfg, HeadScores(torch.rand(2, 2, generator=gen), model=family, data="test"))
    cache = AudioKVCache(model.config, handle.engines)
    model(ids, **cached(model, cache), use_cache=True)
    assert cache.get_seq_length() == 800  # logical length: positions continue at 800
    assert cache.kv_bytes <= 0.52 * dense_bytes
    nxt = torch.randint(3, 97, (1, 1), generator=gen)
    got = model(nxt, **cached(model, cache), use_cache=True).logits[:, -1]
    kept = kept_state(handle.engines, 800)
    assert all(not torch.equal(e.budgets, e.budgets[:, :1].expand_as(e.budgets)) for e in handle.engines.values())
    handle.remove()

    AttentionInterface.register("masked_reference", _masked_reference(kept))
    ALL_MASK_ATTENTION_FUNCTIONS.register("masked_reference", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.config._attn_implementation = "masked_reference"
    try:
        ref_cache = DynamicCache(config=model.config)
        model(ids, **cached(model, ref_cache), use_cache=True)
        want = model(nxt, **cached(model, ref_cache), use_cache=True).logits[:, -1]
    finally:
        model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_generate_after_compression_keeps_positions_and_memory():
    model = tiny("qwen2")
    ids = torch.randint(3, 97, (2, 400), generator=torch.Generator().manual_seed(1))
    cfg = AudioKVConfig(compression_ratio=0.5, window=16, page_size=16, decode_reserve=16)
    with apply_audiokv(model, cfg) as handle:
        out = model.generate(ids, max_new_tokens=20, do_sample=False, return_dict_in_generate=True)
        cache = cache_in(model, out)
        assert isinstance(cache, AudioKVCache) and cache.get_seq_length() == 419
        dense = 2 * 2 * 2 * 2 * 419 * 16 * 4  # layers * K,V * batch * kv heads * tokens * dim * fp32
        slack = 2 * 2 * 2 * 2 * (16 + 16) * 16 * 4  # per row: one partly filled page + the decode reserve
        assert handle.kv_bytes <= 0.5 * dense + slack
        sampled = model.generate(ids, max_new_tokens=5, do_sample=True, top_k=5)
        assert sampled.shape == (2, 405)


def test_4000_generated_tokens_with_decode_time_eviction_stay_within_the_kept_part_throughout():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**{**COMMON, "max_position_embeddings": 8192})).eval()
    ids = torch.randint(3, 97, (1, 200), generator=torch.Generator().manual_seed(2))
    keep, every = 64, 16
    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, decode_keep=keep, decode_every=every)
    held, memory = [], []

    def record(*_):  # after each forward: the generated tokens a row holds, the bytes all pools hold
        held.append(max(e.pool.appended for e in handle.engines.values()))
        memory.append(handle.kv_bytes)

    with apply_audiokv(model, cfg) as handle:
        hook = model.register_forward_hook(record)
        try:
            out = model.generate(ids, max_new_tokens=4000, min_new_tokens=4000, do_sample=False)
        finally:
            hook.remove()
    assert out.shape == (1, 4200) and len(held) == 4000  # the prefill and 3,999 decode steps
    assert max(held) <= keep + every  # generated tokens per row never pass the target and one period
    assert held[-1] >= keep  # and it keeps what it should, the latest window included
    assert max(memory[every * 2 :]) == memory[-1]  # the storage stopped growing after the first evictions


def test_unsupported_model_and_wrong_calibration_are_clear_errors():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match=r"does not support model_type 'gpt2'.*Qwen2-Audio"):
        apply_audiokv(gpt2, AudioKVConfig())
    assert len(SUPPORTED_FAMILIES) >= 4
    with pytest.raises(ValueError, match="2 x 2"):
        apply_audiokv(tiny("llama"), AudioKVConfig(), HeadScores(torch.rand(4, 6), model="m", data="d"))
    holder = mock.Mock(spec=["model"], model=tiny("llama"))  # e.g. audiokv's SpeechModel
    with pytest.raises(TypeError, match=r"model must be a transformers model, got Mock \(pass its \.model\)"):
        apply_audiokv(holder, AudioKVConfig())
    with pytest.raises(TypeError, match="config must be an AudioKVConfig, got dict"):
        apply_audiokv(tiny("llama"), {"compression_ratio": 0.5})
    with pytest.raises(TypeError, match=r"calibration must be HeadScores\.load\(path\) or None, got str"):
        apply_audiokv(tiny("llama"), AudioKVConfig(), "calib/whisper-tiny.en.safetensors")


def test_beam_search_and_several_samples_per_prompt_reorder_the_pages_like_the_dense_cache():
    model = tiny("llama")
    ids, mask = left_padded(2, 60, torch.Generator().manual_seed(4))
    beams = dict(attention_mask=mask, max_new_tokens=8, num_beams=3, num_return_sequences=2, do_sample=False)
    samples = dict(attention_mask=mask, max_new_tokens=8, do_sample=True, num_return_sequences=3)
    ref_beams = model.generate(ids, **beams)
    torch.manual_seed(1)
    ref_samples = model.generate(ids, **samples)
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, page_size=16)):
        assert torch.equal(model.generate(ids, **beams), ref_beams)  # a beam reading another beam's pages would differ
        torch.manual_seed(1)
        assert torch.equal(model.generate(ids, **samples), ref_samples)


def test_sliding_window_layers_are_left_alone_never_compressed_as_full_attention():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    windowless = MistralForCausalLM(MistralConfig(**COMMON, sliding_window=None)).eval()
    with apply_audiokv(windowless, AudioKVConfig(page_size=16)) as handle:
        assert list(handle.engines) == [0, 1]  # Mistral v0.2+: full attention, compressed
    windowed = MistralForCausalLM(MistralConfig(**COMMON, sliding_window=16)).eval()
    with pytest.raises(ValueError, match=r"sliding-window \(sliding_window=16\).*nothing to compress"):
        apply_audiokv(windowed, AudioKVConfig(page_size=16))
    mixed = Qwen2ForCausalLM(Qwen2Config(**COMMON, use_sliding_window=True, sliding_window=16, max_window_layers=1))
    ids = torch.randint(3, 97, (1, 60), generator=torch.Generator().manual_seed(2))
    ref = mixed.eval().generate(ids, max_new_tokens=6, do_sample=False)
    with apply_audiokv(mixed, AudioKVConfig(compression_ratio=0.0, page_size=16)) as handle:
        assert list(handle.engines) == [0]  # layer 1 slides: kept as it is
        assert torch.equal(mixed.generate(ids, max_new_tokens=6, do_sample=False), ref)


TEXT = {k: v for k, v in COMMON.items() if k != "vocab_size"} | {"vocab_size": 200}
MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}
AUDIO = dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32, d_model=32)


def qwen2_audio():
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    cfg = Qwen2AudioConfig(audio_config=AUDIO | {"max_source_positions": 60}, text_config=TEXT, audio_token_index=150)
    spec = dict(before=[], after=[], n_audio=30, frames=120, mask=True, second=(80, 20))
    return Qwen2AudioForConditionalGeneration(cfg), spec


def qwen2_5_omni_thinker():
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration

    cfg = Qwen2_5OmniThinkerConfig(
        audio_config=AUDIO | dict(max_source_positions=60, n_window=10, output_dim=96),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=96),
        text_config=TEXT | {"rope_parameters": MROPE},
        audio_token_index=150, image_token_index=151, video_token_index=152, vision_start_token_id=153,
        audio_start_token_id=154, audio_end_token_id=155, position_id_per_seconds=25,
    )  # fmt: skip
    model = Qwen2_5OmniThinkerForConditionalGeneration(cfg)
    return model, dict(before=[154], after=[155], n_audio=30, frames=120, mask=True, second=(80, 20))


def qwen3_omni_moe_thinker():
    from transformers import Qwen3OmniMoeThinkerConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    text = TEXT | dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
    cfg = Qwen3OmniMoeThinkerConfig(
        audio_config=AUDIO | dict(max_source_positions=1500, n_window=50, n_window_infer=100, output_dim=96,
                                  downsample_hidden_size=8),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=96,
                           deepstack_visual_indexes=[0]),
        text_config=text | {"rope_parameters": MROPE | {"mrope_interleaved": True}},
        audio_token_id=150, image_token_id=151, video_token_id=152, vision_start_token_id=153,
        audio_start_token_id=154, position_id_per_seconds=25,
    )  # fmt: skip
    model = Qwen3OmniMoeThinkerForConditionalGeneration(cfg)
    return model, dict(before=[154], after=[], n_audio=26, frames=200, mask=True, second=(133, 18))


def voxtral():
    from transformers import VoxtralConfig, VoxtralForConditionalGeneration

    audio = dict(num_mel_bins=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, hidden_size=32)
    cfg = VoxtralConfig(audio_config=audio | {"max_source_positions": 60}, text_config=TEXT, audio_token_id=150)
    spec = dict(before=[], after=[], n_audio=60, frames=120, mask=False, second=(None, 120))
    return VoxtralForConditionalGeneration(cfg), spec


LALMS = {f.__name__: f for f in (qwen2_audio, qwen2_5_omni_thinker, qwen3_omni_moe_thinker, voxtral)}


def prompt_ids(spec, n_audio, gen, text_after):
    """``[T]`` ids: 5 text tokens, the audio markers around ``n_audio`` placeholders, ``text_after`` text tokens."""
    parts = [
        torch.randint(0, 100, (5,), generator=gen),
        torch.tensor(spec["before"], dtype=torch.long),
        torch.full((n_audio,), 150),
        torch.tensor(spec["after"], dtype=torch.long),
        torch.randint(0, 100, (text_after,), generator=gen),
    ]
    return torch.cat(parts)


def left_pad(rows):
    """``[B, T]`` ids and attention mask of 1-D id rows, padded on the left with 0."""
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, length - len(row) :], mask[b, length - len(row) :] = row, 1
    return ids, mask


def lalm_inputs(name, gen, text_after=300):
    torch.manual_seed(0)
    model, spec = LALMS[name]()
    ids = prompt_ids(spec, spec["n_audio"], gen, text_after)[None]
    inputs = dict(input_ids=ids, input_features=torch.randn(1, 16, spec["frames"], generator=gen))
    if spec["mask"]:
        inputs["feature_attention_mask"] = torch.ones(1, spec["frames"], dtype=torch.long)
    start = 5 + len(spec["before"])
    return model.eval(), inputs, (start, start + spec["n_audio"])


def test_an_audio_prompt_given_as_embeddings_only_is_said_to_lose_its_audio_span():
    """The audio span comes from the placeholder ids: with inputs_embeds alone it cannot be found."""
    model, inputs, _ = lalm_inputs("qwen2_audio", torch.Generator().manual_seed(7), text_after=40)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.5, window=8)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # with the ids: found, nothing said
            model(**inputs, use_cache=True)
        with pytest.warns(UserWarning, match="passes inputs_embeds only, so its audio is compressed as text"):
            model(inputs_embeds=embeds, use_cache=True)


@pytest.mark.parametrize(
    ("name", "chunk"), [("qwen2_audio", None), ("qwen2_5_omni_thinker", None), ("qwen2_audio", 64)]
)
def test_two_clips_with_text_between_them_decode_over_exactly_what_each_clip_kept(name, chunk):
    """Several clips in one prompt: the text between them is text, and each clip merges within itself only.

    Prefilled in chunks of 64, the first chunk holds the end of one clip, the text and the start of the next.
    """
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    model, spec = LALMS[name]()
    clip = [*spec["before"], *[150] * spec["n_audio"], *spec["after"]]
    between = torch.randint(0, 100, (12,), generator=gen).tolist()
    ids = torch.tensor([[*range(1, 6), *clip, *between, *clip, *torch.randint(0, 100, (40,), generator=gen).tolist()]])
    inputs = dict(input_ids=ids, input_features=torch.randn(2, 16, spec["frames"], generator=gen))
    inputs["feature_attention_mask"] = torch.ones(2, spec["frames"], dtype=torch.long)
    cfg = AudioKVConfig(compression_ratio=0.6, window=8, page_size=16, decode_reserve=0, prefill_chunk=chunk)
    calibration = HeadScores(torch.rand(2, 2, generator=gen), model=name, data="test")
    with apply_audiokv(model.eval(), cfg, calibration) as handle:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing to warn about any more
            out = model.generate(**inputs, **GREEDY)
        audio = handle.engines[0].prompt.audio_span
        assert [len(r) for r in merge_runs(audio if chunk is None else audio[:, :chunk], cfg.window)] == [2]
        length = ids.shape[1]
        kept = kept_state(handle.engines, length, chunk and chunk_bounds(length, chunk, None))
    want = generate_with_reference(model, kept, set_implementation, **inputs, **GREEDY)
    assert torch.equal(out.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


def lalm_batch(name, gen):
    """Three left-padded prompts; returns model, inputs, ``[3, 2]`` audio spans.

    The second clip has fewer valid frames (Voxtral: one more 30 s chunk, so more
    tokens) and the third a shorter text, so all three rows are padded differently.
    """
    torch.manual_seed(0)
    model, spec = LALMS[name]()
    valid, n_second = spec["second"]
    audio = (spec["n_audio"], n_second, spec["n_audio"])
    rows = [prompt_ids(spec, n, gen, text) for n, text in zip(audio, (60, 60, 45), strict=True)]
    ids, mask = left_pad(rows)
    spans = []
    for row, n in zip(rows, audio, strict=True):
        start = ids.shape[1] - len(row) + 5 + len(spec["before"])
        spans.append([start, start + n])
    inputs = dict(input_ids=ids, attention_mask=mask)
    if spec["mask"]:
        inputs["input_features"] = torch.randn(3, 16, spec["frames"], generator=gen)
        inputs["feature_attention_mask"] = torch.ones(3, spec["frames"], dtype=torch.long)
        inputs["feature_attention_mask"][1, valid:] = 0
    else:
        inputs["input_features"] = torch.randn(4, 16, spec["frames"], generator=gen)
    return model.eval(), inputs, torch.tensor(spans)


GREEDY = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)


def set_implementation(model, impl):
    """The language model's attention implementation (not the audio encoder's: transformers 5.2's
    ``get_decoder()`` of an Omni thinker is the thinker itself, audio encoder included)."""
    text = model.config.get_text_config(decoder=True)
    layers = layer_stack(model, "self_attn").modules()
    for cfg in {id(c): c for c in (text, *(m.config for m in layers if hasattr(m, "k_proj")))}.values():
        cfg._attn_implementation = impl


@pytest.mark.parametrize("name", list(LALMS))
def test_lalm_ratio_zero_identical_and_half_matches_masked_attention(name):
    gen = torch.Generator().manual_seed(11)
    model, inputs, span = lalm_inputs(name, gen)
    ref = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, page_size=16)):
        assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), ref)

    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, decode_reserve=0, sss_cutoff=0.2)
    handle = apply_audiokv(model, cfg, HeadScores(torch.rand(2, 2, generator=gen), model=name, data="test"))
    out = model.generate(**inputs, **GREEDY)
    engine = handle.engines[0]
    assert mask_spans(engine.prompt.audio_span).tolist() == [list(span)]
    length = inputs["input_ids"].shape[1]
    assert cache_in(model, out).get_seq_length() == length + 5  # positions go on after eviction
    kept = kept_state(handle.engines, length)
    handle.remove()

    want = generate_with_reference(model, kept, set_implementation, **inputs, **GREEDY)
    assert torch.equal(out.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("name", "tokens"), [("qwen2_audio", 50), ("qwen2_5_omni_thinker", 50),
                                             ("qwen3_omni_moe_thinker", 25), ("voxtral", 25)])  # fmt: skip
def test_the_onset_spans_the_same_seconds_in_every_family(name, tokens):
    """The default 2 s of onset at each family's audio token rate (25 or 12.5 per second; Whisper's 50 give 100)."""
    model, _ = LALMS[name]()
    with apply_audiokv(model, AudioKVConfig(), policy="audiokv-no-heads") as handle:
        assert {e.onset_tokens for e in handle.engines.values()} == {tokens}


@pytest.mark.parametrize("name", list(LALMS))
def test_lalm_batch_with_different_audio_lengths(name):
    model, inputs, spans = lalm_batch(name, torch.Generator().manual_seed(5))
    ref = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, page_size=16)):
        assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), ref)

    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, decode_reserve=0, sss_cutoff=0.2)
    calibration = HeadScores(torch.rand(2, 2, generator=torch.Generator().manual_seed(6)), model=name, data="test")
    with apply_audiokv(model, cfg, calibration) as handle:
        out = model.generate(**inputs, **GREEDY)
        engine = handle.engines[0]
        assert torch.equal(mask_spans(engine.prompt.audio_span), spans)  # each row's own span
        padding = ~inputs["attention_mask"].bool()
        for (b, h), budget in np.ndenumerate(engine.budgets.numpy()):  # padding is never kept
            assert not padding[b, engine.kept_indices[b, h, :budget]].any()
        length = inputs["input_ids"].shape[1]
        kept = kept_state(handle.engines, length)
    want = generate_with_reference(model, kept, set_implementation, **inputs, **GREEDY)
    assert torch.equal(out.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(LALMS))
def test_lalm_chunked_prefill_attends_over_what_each_chunk_kept(name):
    gen = torch.Generator().manual_seed(12)
    model, inputs, _ = lalm_inputs(name, gen, text_after=100)
    length = inputs["input_ids"].shape[1]
    greedy = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, output_logits=True)
    ref = model.generate(**inputs, **greedy)
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, window=8, prefill_chunk=24)):  # nothing lost
        same = model.generate(**inputs, **greedy)
    assert torch.equal(same.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(same.logits), torch.stack(ref.logits), atol=1e-4, rtol=0)

    cfg = AudioKVConfig(compression_ratio=0.5, window=8, prefill_chunk=24)  # the audio crosses a chunk boundary
    calibration = HeadScores(torch.rand(2, 2, generator=gen), model=name, data="test")
    with apply_audiokv(model, cfg, calibration) as handle:
        out = model.generate(**inputs, **greedy)
        kept = kept_state(handle.engines, length, chunk_bounds(length, 24))
        assert handle.engines[0].prompt_length == length
    want = generate_with_reference(model, kept, set_implementation, **inputs, **greedy)
    assert torch.equal(out.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bsz", [1, 3])
def test_chunked_prefill_of_a_padded_batch_keeps_padding_in_the_first_chunk(bsz):
    model = tiny("qwen2")
    ids, mask = left_padded(bsz, 90, torch.Generator().manual_seed(bsz))
    greedy = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_logits=True)
    ref = model.generate(ids, attention_mask=mask, **greedy)
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, window=8, prefill_chunk=10)):
        same = model.generate(ids, attention_mask=mask, **greedy)
    assert torch.equal(same.sequences, ref.sequences)
    bounds = chunk_bounds(90, 10, mask.bool())
    assert bounds[:2] == ([(0, 10), (10, 20)] if bsz == 1 else [(0, 24), (24, 34)])  # row 2 pads 14 tokens
    with pytest.warns(UserWarning, match="prefill_chunk=10 keeps at least"):  # small chunks on purpose
        cfg = AudioKVConfig(compression_ratio=0.6, window=8, prefill_chunk=10)
    with apply_audiokv(model, cfg) as handle:
        out = model.generate(ids, attention_mask=mask, **greedy)
        kept = kept_state(handle.engines, 90, bounds)
    want = generate_with_reference(model, kept, set_implementation, input_ids=ids, attention_mask=mask, **greedy)
    assert torch.equal(out.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


def test_chunked_prefill_of_15k_tokens_holds_the_budget_plus_one_chunk_and_attends_over_the_kept_tokens():
    model = tiny("qwen2")
    length, chunk, page = 15_000, 1024, 16
    ids = torch.randint(3, 97, (1, length), generator=torch.Generator().manual_seed(15))
    cfg = AudioKVConfig(compression_ratio=0.7, window=16, page_size=page, decode_reserve=0, prefill_chunk=chunk)
    with apply_audiokv(model, cfg) as handle:
        cache = AudioKVCache(model.config, handle.engines)
        got = model(ids, **cached(model, cache), use_cache=True).logits
        slot = 2 * 16 * 4  # K and V of one token of one KV head, fp32 (text only: no merging, no log mass)
        pools = 0
        for engine in handle.engines.values():  # at most the kept tokens, one page per row and one chunk's K/V
            kept = int(engine.budgets.sum())
            assert kept <= 0.31 * 2 * length
            assert engine.peak_kv_bytes <= (kept + 2 * page) * slot + 2 * chunk * slot
            pools += (kept + 2 * page) * slot
        peak = handle.peak_kv_bytes  # the model: every layer's pool and one layer's chunk in flight
        nxt = torch.randint(3, 97, (1, 1), generator=torch.Generator().manual_seed(16))
        got_next = model(nxt, **cached(model, cache), use_cache=True).logits[:, -1]
        kept = kept_state(handle.engines, length, chunk_bounds(length, chunk))
    assert peak <= pools + 2 * chunk * slot  # unchunked: + one layer's 15k tokens

    AttentionInterface.register("masked_reference", _masked_reference(kept))
    ALL_MASK_ATTENTION_FUNCTIONS.register("masked_reference", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.config._attn_implementation = "masked_reference"
    try:
        ref_cache = DynamicCache(config=model.config)
        want = model(ids, **cached(model, ref_cache), use_cache=True).logits
        want_next = model(nxt, **cached(model, ref_cache), use_cache=True).logits[:, -1]
    finally:
        model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(got_next, want_next, atol=1e-4, rtol=0)


def test_one_compressed_context_answers_follow_up_questions_like_compressing_it_for_each():
    # query-agnostic: the context (text, audio, text) is compressed before any question is seen; each
    # question and its answer are appended, then cropped away for the next question
    gen = torch.Generator().manual_seed(4)
    model, context, _ = lalm_inputs("qwen2_audio", gen, text_after=40)
    questions = [torch.randint(0, 100, (1, 12), generator=gen) for _ in range(3)]
    greedy = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True)
    cfg = AudioKVConfig(compression_ratio=0.6, window=8)
    calibration = HeadScores(torch.rand(2, 2, generator=gen), model="qwen2-audio", data="test")

    def ask(cache, question):  # the audio is in the cache already: only token ids go in
        return model.generate(torch.cat([context["input_ids"], question], 1), **cached(model, cache), **greedy)

    with apply_audiokv(model, cfg, calibration) as handle:
        cache = cache_in(model, model(**context, use_cache=True))
        length = cache.get_seq_length()
        kept = kept_state(handle.engines, length)
        reused = []
        for question in questions:
            reused.append(ask(cache, question))
            cache.crop(length)
        assert all(e.pool.row_lengths == e.budgets.flatten().tolist() for e in handle.engines.values())
        with pytest.raises(ValueError, match="compressed prompt"):
            cache.crop(length - 1)
        fresh = [ask(cache_in(model, model(**context, use_cache=True)), q) for q in questions]
    for question, got, again in zip(questions, reused, fresh, strict=True):
        assert torch.equal(got.sequences, again.sequences)
        torch.testing.assert_close(torch.stack(got.logits), torch.stack(again.logits), atol=1e-5, rtol=0)
        ids = torch.cat([context["input_ids"], question], 1)
        want = generate_with_reference(model, kept, set_implementation, **{**context, "input_ids": ids}, **greedy)
        assert torch.equal(got.sequences, want.sequences)  # the question saw exactly the kept context
        torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


@pytest.mark.parametrize("ratio", [0.5, 0.7])
def test_a_30_second_clip_holds_what_the_ratio_promises_with_the_default_config(ratio):
    # 750 audio tokens, as one 30 s clip gives Qwen2-Audio: with 128-token pages and a fixed 128-token
    # decode reserve per row, ratio 0.5 held ~80% of the dense bytes; pages fitted to the prompt and a
    # reserve of generate's max_new_tokens hold (1 - r) plus a few percent (here mostly merging's log mass)
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2AudioConfig(audio_config=AUDIO | {"max_source_positions": 1500}, text_config=TEXT, audio_token_index=150)
    model = Qwen2AudioForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(3)
    ids = prompt_ids(dict(before=[], after=[]), 750, gen, 20)[None]
    features = torch.randn(1, 16, 3000, generator=gen)
    inputs = dict(input_ids=ids, input_features=features, feature_attention_mask=torch.ones(1, 3000, dtype=torch.long))
    with apply_audiokv(model, AudioKVConfig(compression_ratio=ratio)) as handle:
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        held = handle.kv_bytes
        assert {e.pool.page_size for e in handle.engines.values()} == {16}
    assert "generate" not in model.__dict__  # the reserving wrapper is gone with the handle
    assert held <= (1 - ratio + 0.05) * dense_kv_bytes(model, out.shape[1] - 1, 1)


def test_ten_minutes_of_audio_prefilled_in_chunks_hold_the_budget_plus_one_chunk():
    # 20 clips of 30 s: 15,000 audio tokens in a tiny Qwen2-Audio, prefilled 2,048 tokens at a time
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(0)
    cfg = Qwen2AudioConfig(audio_config=AUDIO | {"max_source_positions": 1500}, text_config=TEXT, audio_token_index=150)
    model = Qwen2AudioForConditionalGeneration(cfg).eval()
    gen = torch.Generator().manual_seed(9)
    ids = prompt_ids(dict(before=[], after=[]), 20 * 750, gen, 20)[None]
    features = torch.randn(20, 16, 3000, generator=gen)
    inputs = dict(input_ids=ids, input_features=features, feature_attention_mask=torch.ones(20, 3000, dtype=torch.long))
    ref = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, window=16, prefill_chunk=2048)):
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), ref)  # chunks lose nothing

    calibration = HeadScores(torch.rand(2, 2, generator=gen), model="qwen2-audio", data="test")
    config = AudioKVConfig(compression_ratio=0.7, window=16, prefill_chunk=2048)
    with apply_audiokv(model, config, calibration) as handle:
        model.generate(**inputs, max_new_tokens=4, do_sample=False)
        pools, rows, slot = 0, 2, 2 * 16 * 4 + 4  # K and V of one token, fp32, and its log mass (merged audio)
        chunk_kv = 2 * rows * 2048 * 16 * 4
        for engine in handle.engines.values():
            kept, page = int(engine.budgets.sum()), engine.pool.page_size
            assert kept <= 0.3 * rows * ids.shape[1] + rows * 8 * 16  # and each chunk's window (16) at most
            pools += (kept + rows * (page + 3)) * slot  # 3: the decode reserve
            assert engine.peak_kv_bytes <= (kept + rows * (page + 3)) * slot + chunk_kv
        assert handle.peak_kv_bytes <= pools + chunk_kv  # unchunked: + one layer's 15k tokens


@pytest.mark.parametrize("policy", ["audiokv", "audiokv-no-heads"])
def test_lalm_batch_mixing_an_audio_prompt_and_a_text_only_prompt(policy):
    gen = torch.Generator().manual_seed(8)
    torch.manual_seed(0)
    model, spec = LALMS["qwen2_audio"]()
    rows = [prompt_ids(spec, spec["n_audio"], gen, 60), torch.randint(0, 100, (70,), generator=gen)]
    ids, mask = left_pad(rows)
    inputs = dict(input_ids=ids, attention_mask=mask, input_features=torch.randn(1, 16, spec["frames"], generator=gen))
    inputs["feature_attention_mask"] = torch.ones(1, spec["frames"], dtype=torch.long)  # one clip: row 0's
    calibration = HeadScores(torch.rand(2, 2, generator=gen), model="qwen2-audio", data="test")
    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, decode_reserve=0)
    with apply_audiokv(model.eval(), cfg, calibration, policy) as handle:
        out = model.generate(**inputs, **GREEDY)  # raised "audio span (0, 0) is empty" before
        engine = handle.engines[0]
        assert not engine.prompt.audio_span[1].any()  # the text row has no audio
        length = ids.shape[1]
        kept = kept_state(handle.engines, length)
    want = generate_with_reference(model, kept, set_implementation, **inputs, **GREEDY)
    assert torch.equal(out.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", list(LALMS))
def test_decoder_calibration_captures_the_eager_text_to_audio_attention(name):
    from audiokv.calibrate import calibrate_decoder, decoder_audio_attention

    model, inputs, (start, end) = lalm_inputs(name, torch.Generator().manual_seed(3), text_after=40)
    text_start = end + 12  # a prompt after the audio, then the "transcript"
    got = decoder_audio_attention(model, inputs, text_start)
    assert model.config.get_text_config(decoder=True)._attn_implementation == "sdpa"  # restored
    set_implementation(model, "eager")
    try:
        want = model(**inputs, output_attentions=True).attentions
    finally:
        set_implementation(model, "sdpa")
    length = inputs["input_ids"].shape[1]
    assert len(got) == len(want) == 2
    for g, w in zip(got, want, strict=True):
        assert g.shape == (6, length - text_start, end - start)
        torch.testing.assert_close(g, w[0, :, text_start - 1 : length - 1, start:end].float(), atol=1e-5, rtol=0)

    scores = calibrate_decoder(model, [(inputs, text_start)] * 2, name=name, progress=False)
    assert scores.shape == (2, 2) and scores.model == name
    assert torch.isfinite(scores.scores).all() and (scores.scores >= 0).all() and (scores.scores <= 1).all()
    no_audio = dict(inputs, input_ids=inputs["input_ids"].clamp(max=100))
    with pytest.raises(ValueError, match="audio span is empty"):
        decoder_audio_attention(model, no_audio, text_start)
    two_clips = inputs["input_ids"].clone()
    two_clips[0, (two_clips[0] == 150).nonzero()[1, 0]] = 7  # text splits the clip in two
    with pytest.raises(ValueError, match="calibration aligns one clip at a time"):
        decoder_audio_attention(model, dict(inputs, input_ids=two_clips), text_start)
    with pytest.raises(ValueError, match="transcript must follow the audio"):
        decoder_audio_attention(model, inputs, start + 1)


def tiny_whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    cfg = WhisperConfig(
        vocab_size=120, num_mel_bins=16, d_model=48, encoder_layers=1, decoder_layers=2,
        encoder_attention_heads=3, decoder_attention_heads=3, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=800, max_target_positions=64, decoder_start_token_id=1, pad_token_id=0,
        eos_token_id=2, bos_token_id=2,
    )  # fmt: skip
    return WhisperForConditionalGeneration(cfg).eval()


def whisper_steps(model, features, steps=3, cache=None):
    """Greedy decoding by hand; returns the logits of every step and the cache."""
    tokens = torch.tensor([[1, 5]])
    logits = []
    for _ in range(steps):
        out = model(input_features=features, decoder_input_ids=tokens, **cached(model, cache), use_cache=True)
        cache = cache_in(model, out)
        logits.append(out.logits[:, -1])
        tokens = out.logits[:, -1:].argmax(-1)
    return logits, cache


def _masked_cross_reference(kept):
    """Unpatched attention; decode steps see only the encoder frames audiokv kept (merged)."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        is_cross = getattr(module, "is_decoder", False) and key.shape[2] == 800
        if not (is_cross and query.shape[2] == 1):  # everything but a compressed decode step: plain SDPA
            return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        key, value, bias = _compressed_prompt(key, value, kept[module.layer_idx])
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias[:, :, None], scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    return attention


def test_whisper_cross_attention_cache_is_compressed_and_exact_on_the_kept_frames():
    model = tiny_whisper()
    features = torch.randn(1, 16, 1600, generator=torch.Generator().manual_seed(2))
    ref_logits, dense = whisper_steps(model, features)
    dense_cross = sum(layer.keys.nbytes + layer.values.nbytes for layer in dense.cross_attention_cache.layers)

    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, page_size=16)):
        same, _ = whisper_steps(model, features)
    for a, b in zip(same, ref_logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    cfg = AudioKVConfig(compression_ratio=0.5, page_size=16, sinks=2)
    with apply_audiokv(model, cfg) as handle:
        got, cache = whisper_steps(model, features)
        head_dim = model.config.d_model // model.config.decoder_attention_heads
        assert cache.kv_bytes <= 0.52 * dense_cross * (1 + 1 / (2 * head_dim))  # + one fp32 log mass per slot
        assert cache.get_seq_length() == dense.get_seq_length()  # decoder self-attention untouched
        kept = kept_state(handle.engines, 800)

    for module in model.model.decoder.modules():
        if hasattr(module, "k_proj"):
            module.is_decoder = True
    AttentionInterface.register("masked_cross", _masked_cross_reference(kept))
    ALL_MASK_ATTENTION_FUNCTIONS.register("masked_cross", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.config._attn_implementation = "masked_cross"
    try:
        want, _ = whisper_steps(model, features)
    finally:
        model.config._attn_implementation = "sdpa"
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def tiny_gemma3n():
    """Gemma 3n with 6 layers: sliding, sliding, full, then three layers that reuse layers 1 and 2's K/V.

    Its vision tower is a timm model; timm is not installed and audio never reaches it, so it is stubbed.
    """
    from unittest import mock

    import transformers.models.gemma3n.modeling_gemma3n as gemma3n
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig

    text = Gemma3nTextConfig(
        vocab_size=320, vocab_size_per_layer_input=300, hidden_size=64, hidden_size_per_layer_input=8,
        intermediate_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_kv_shared_layers=3, layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        sliding_window=32, laurel_rank=4, altup_num_inputs=2, activation_sparsity_pattern=[0.0] * 6,
    )  # fmt: skip
    audio = Gemma3nAudioConfig(
        hidden_size=32, conf_num_attention_heads=2, conf_num_hidden_layers=1, sscp_conv_channel_size=[8, 8],
        input_feat_size=16, conf_attention_chunk_size=4, conf_attention_context_left=5,
        conf_attention_context_right=0, vocab_size=16, vocab_offset=304,
    )  # fmt: skip
    vision = Gemma3nVisionConfig(vocab_size=4, vocab_offset=300, hidden_size=32)
    cfg = Gemma3nConfig(
        text_config=text, audio_config=audio, vision_config=vision, audio_soft_tokens_per_image=20,
        boa_token_id=290, eoa_token_id=291, audio_token_id=305, image_token_id=301, boi_token_id=292, eoi_token_id=293,
    )  # fmt: skip
    build = gemma3n.AutoModel.from_config

    def no_vision(config, **kwargs):
        return nn.Module() if config is cfg.vision_config else build(config, **kwargs)

    torch.manual_seed(0)
    with mock.patch.object(gemma3n.AutoModel, "from_config", no_vision):
        return gemma3n.Gemma3nForConditionalGeneration(cfg).eval()


def gemma3n_inputs(gen, bsz=1, text_after=1500):
    rows = [
        torch.cat([torch.randint(0, 100, (5 + 9 * b,), generator=gen), torch.tensor([290]),
                   torch.full((20,), 305), torch.tensor([291]), torch.randint(0, 100, (text_after,), generator=gen)])
        for b in range(bsz)
    ]  # fmt: skip
    ids, mask = left_pad(rows)
    features = torch.randn(bsz, 200, 16, generator=gen)
    return dict(input_ids=ids, attention_mask=mask, input_features=features,
                input_features_mask=torch.ones(bsz, 200, dtype=torch.bool))  # fmt: skip


def test_a_shared_pool_carries_the_prior_of_every_layer_that_reads_it():
    from audiokv.integrations.families import LayerRoles

    roles = LayerRoles(compressed=[0, 2], shared={3: 2, 4: 2}, kept=[1])  # Gemma 3n-like: 3 and 4 read layer 2
    scores = torch.tensor([[1.0, 3.0], [9.0, 9.0], [0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])
    assert roles.pool_prior(scores).tolist() == [2.0, 3.0]  # layer 0 alone; layer 2 plus its two readers


@pytest.mark.parametrize("bsz", [1, 2])
def test_gemma3n_compresses_the_kv_producer_and_its_sharers_read_the_pool(bsz):
    model = tiny_gemma3n()
    gen = torch.Generator().manual_seed(3)
    inputs = gemma3n_inputs(gen, bsz)
    try:
        ref = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    except AttributeError as err:  # transformers 5.2's own Gemma 3n audio path, before audiokv is applied
        if "audio_mel_mask" not in str(err):
            raise
        pytest.skip(f"this transformers' Gemma 3n fails on audio input by itself: {err}")
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, page_size=16)) as handle:
        assert list(handle.engines) == [2]  # the only full-attention layer with K/V of its own
        layers = model.model.language_model.layers
        assert layers[5].self_attn.audiokv.source is handle.engines[2]  # reuses layer 2's K/V
        assert not any(hasattr(layers[i].self_attn, "audiokv") for i in (0, 1, 3, 4))  # sliding: kept
        assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), ref)
    assert not any(hasattr(m, "audiokv") for m in model.modules())  # removed
    assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), ref)

    length = inputs["input_ids"].shape[1]
    dense = DynamicCache(config=model.config)
    model(**inputs, **cached(model, dense), use_cache=True)
    full_bytes = dense.layers[2].keys.nbytes + dense.layers[2].values.nbytes
    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, decode_reserve=0)
    calibration = HeadScores(torch.rand(6, 2, generator=gen), model="gemma3n", data="test")
    with apply_audiokv(model, cfg, calibration) as handle:
        out = model.generate(**inputs, **GREEDY)
        engine = handle.engines[2]
        starts = length - inputs["attention_mask"].sum(-1) + 6 + 9 * torch.arange(bsz)  # after padding, text, boa
        assert torch.equal(mask_spans(engine.prompt.audio_span), torch.stack([starts, starts + 20], -1))
        assert cache_in(model, out).get_seq_length() == length + 5
        # half the prompt, the 5 tokens decoded after it, one partial page per row at most,
        # and a fp32 log-mass per slot beside K and V
        bound = (0.5 * full_bytes + (5 + 16) * full_bytes / length) * (1 + 1 / (2 * engine.head_dim))
        assert handle.kv_bytes <= bound
        kept = kept_state({2: engine, 5: engine}, length)
    want = generate_with_reference(model, kept, set_implementation, **inputs, **GREEDY)
    assert torch.equal(out.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


def test_gemma3n_prefilled_in_chunks_its_sharers_read_what_the_producer_held_before_each_chunk():
    """Layer 5 reads layer 2's pool: chunk by chunk it sees what layer 2 kept of the earlier chunks, not this one's."""
    model = tiny_gemma3n()
    gen = torch.Generator().manual_seed(4)
    inputs = gemma3n_inputs(gen, 2, text_after=100)
    try:
        ref = model.generate(**inputs, **GREEDY)
    except AttributeError as err:  # transformers 5.2's own Gemma 3n audio path (as above)
        if "audio_mel_mask" not in str(err):
            raise
        pytest.skip(f"this transformers' Gemma 3n fails on audio input by itself: {err}")
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.0, window=8, prefill_chunk=24)):  # nothing lost
        same = model.generate(**inputs, **GREEDY)
    assert torch.equal(same.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(same.logits), torch.stack(ref.logits), atol=1e-4, rtol=0)

    length = inputs["input_ids"].shape[1]
    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, prefill_chunk=24)
    calibration = HeadScores(torch.rand(6, 2, generator=gen), model="gemma3n", data="test")
    with apply_audiokv(model, cfg, calibration) as handle:
        out = model.generate(**inputs, **GREEDY)
        engine = handle.engines[2]
        kept = kept_state({2: engine, 5: engine}, length, chunk_bounds(length, 24, engine.prompt.key_mask))
        assert len(kept[2][-1]) > 3  # the padded prompt went in several chunks
    want = generate_with_reference(model, kept, set_implementation, **inputs, **GREEDY)
    assert torch.equal(out.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(want.logits), atol=1e-4, rtol=0)


def test_a_forward_without_a_cache_is_plain_attention_even_after_a_compressed_generate():
    model = tiny("qwen2")
    ids = torch.randint(3, 97, (2, 80), generator=torch.Generator().manual_seed(3))
    want = model(ids, use_cache=False).logits
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.7, window=8, page_size=16)):
        model.generate(ids, max_new_tokens=4, do_sample=False)
        for _ in range(2):  # the engines hold the last pool: nothing may append to it or read it
            torch.testing.assert_close(model(ids, use_cache=False).logits, want, atol=1e-5, rtol=0)


def test_a_cache_whose_pools_a_later_prefill_took_over_refuses_to_decode():
    """The compressed tokens live in the handle's engines: a second prefill replaces the first cache's."""
    model = tiny("qwen2")
    gen = torch.Generator().manual_seed(6)
    first, second = torch.randint(3, 97, (1, 80), generator=gen), torch.randint(3, 97, (1, 60), generator=gen)
    step = torch.randint(3, 97, (1, 1), generator=gen)
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.5, window=8, page_size=16)) as handle:
        old, live = AudioKVCache(model.config, handle.engines), AudioKVCache(model.config, handle.engines)
        model(first, **cached(model, old), use_cache=True)
        model(second, **cached(model, live), use_cache=True)  # a new sequence through the same engines
        uses = (
            lambda: model(step, **cached(model, old), use_cache=True),
            lambda: old.crop(-1),
            lambda: old.reorder_cache(torch.tensor([0, 0])),  # would have doubled the live sequence's rows
        )
        for use in uses:
            with pytest.raises(ValueError, match="compressed tokens are gone: a later prefill"):
                use()
        old.reset()  # forgets its own count only: the live sequence's pools stay
        old.reorder_cache(torch.tensor([0, 0]))  # nothing of its own to reorder; the live rows stay as they are
        want = model(step, **cached(model, live), use_cache=True).logits
        assert torch.isfinite(want).all() and handle.kv_bytes > 0
    assert handle.kv_bytes == 0 and handle.peak_kv_bytes == 0  # remove() frees the last sequence's pools
    with pytest.raises(ValueError, match="or the handle was removed"):
        model(step, **cached(model, live), use_cache=True)


def test_a_whisper_cache_whose_pools_a_later_clip_took_over_refuses_to_decode():
    """Cross-attention reads the engines' pools, not the cache: the pre-hook checks whose clip they hold."""
    model = tiny_whisper()
    gen = torch.Generator().manual_seed(7)
    first, second = torch.randn(1, 16, 1600, generator=gen), torch.randn(1, 16, 1600, generator=gen)
    step = torch.tensor([[5]])
    cfg = AudioKVConfig(compression_ratio=0.5, page_size=16)
    with apply_audiokv(model, cfg):
        want, _ = whisper_steps(model, second, steps=2)
        _, old = whisper_steps(model, first, steps=1)
        start, live = whisper_steps(model, second, steps=1)  # a new clip through the same engines
        for use in (
            lambda: model(input_features=first, decoder_input_ids=step, **cached(model, old), use_cache=True),
            lambda: old.reorder_cache(torch.tensor([0, 0])),  # would have doubled the live clip's rows
        ):
            with pytest.raises(ValueError, match="compressed tokens are gone: a later prefill"):
                use()
        token = start[0].argmax(-1, keepdim=True)
        got = model(input_features=second, decoder_input_ids=token, **cached(model, live), use_cache=True)
        torch.testing.assert_close(got.logits[:, -1], want[1], atol=1e-5, rtol=0)  # the live clip decodes as before
    with pytest.raises(ValueError, match="or the handle was removed"):
        model(input_features=second, decoder_input_ids=step, **cached(model, live), use_cache=True)


def test_a_decode_step_that_raises_leaves_the_cache_as_it_was():
    model = tiny("qwen2")
    gen = torch.Generator().manual_seed(4)
    ids, steps = torch.randint(3, 97, (1, 80), generator=gen), torch.randint(3, 97, (1, 3), generator=gen)
    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16)

    def run(fail_at):
        cache = AudioKVCache(model.config, handle.engines)
        model(ids, **cached(model, cache), use_cache=True)
        logits = []
        for i in range(3):
            if i == fail_at:
                second = model.model.layers[1].self_attn.audiokv  # the first layer has written its step
                with (
                    mock.patch.object(second, "forward", side_effect=RuntimeError("boom")),
                    pytest.raises(RuntimeError),
                ):
                    model(steps[:, i : i + 1], **cached(model, cache), use_cache=True)
                assert cache.get_seq_length() == 80 + i  # the failed step is not counted
            logits.append(model(steps[:, i : i + 1], **cached(model, cache), use_cache=True).logits)
        return torch.cat(logits, 1)

    with apply_audiokv(model, cfg) as handle:
        torch.testing.assert_close(run(fail_at=1), run(fail_at=None), atol=1e-6, rtol=0)


def test_a_whisper_mask_shorter_than_the_window_is_padded_and_a_longer_one_is_not_read():
    """Long-form generate hands every 30 s window the whole recording's mask: ignored, with a warning."""
    model = tiny_whisper()
    features = torch.randn(1, 16, 1600, generator=torch.Generator().manual_seed(3))
    call = dict(input_features=features, decoder_input_ids=torch.tensor([[1, 5]]), use_cache=True)
    sound = torch.zeros(1, 1600, dtype=torch.bool)
    sound[:, 100:900] = True
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.5, page_size=16)) as handle:
        model(**call, attention_mask=sound)
        full = handle.engines[0].prompt.audio_span.clone()
        model(**call, attention_mask=sound[:, :1000])  # padding="longest": the same sound, shorter
        assert torch.equal(handle.engines[0].prompt.audio_span, full)
        with pytest.warns(UserWarning, match="covers 4000 feature frames"):
            model(**call, attention_mask=torch.ones(1, 4000, dtype=torch.bool))
        assert handle.engines[0].prompt.audio_span is None  # every frame counts as sound


def test_sound_frames_map_the_feature_mask_onto_encoder_frames():
    from audiokv.integrations.apply import sound_frames
    from audiokv.spectral import sound_rows

    mask = torch.zeros(4, 10, dtype=torch.long)
    mask[0, :7], mask[1, :], mask[3, 3:8] = 1, 1, 1  # row 3: a quiet lead-in, then sound, then padding
    mask[1, 4:6] = 0  # row 1: a pause
    frames = sound_frames(mask, 5)
    assert frames.int().tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 1, 1, 0]]
    assert sound_frames(mask, 4)[0].int().tolist() == [1, 1, 1, 0]  # 2.5 inputs a frame: the third overlaps input 6
    spans, inside = sound_rows(frames, 4, 5)
    assert spans.tolist() == [[0, 4], [0, 5], [0, 0], [1, 4]] and torch.equal(inside, frames)
    assert sound_frames(None, 5) is None


def test_the_cache_is_passed_and_read_by_the_name_the_forward_takes():
    class Renamed(nn.Module):
        def forward(self, input_ids, cache=None, **kwargs): ...

    class Former(nn.Module):
        def forward(self, input_ids, past_key_values=None, **kwargs): ...

    assert cache_argument(Renamed()) == "cache" and cache_argument(Former()) == "past_key_values"


def test_only_a_model_that_reads_audio_is_warned_that_it_runs_without_its_head_prior():
    """The prior weighs rows holding audio; a text-only model never has one, so no calibration is missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoCalibrationWarning)
        apply_audiokv(tiny("llama"), AudioKVConfig(), None, "audiokv").remove()
    with pytest.warns(NoCalibrationWarning, match="without a calibration"):
        apply_audiokv(tiny_whisper(), AudioKVConfig(), None, "audiokv").remove()


def test_a_callers_cache_of_none_names_where_the_compressed_cache_goes():
    """``past_key_values=None`` on a forward that takes ``cache``: ours goes under the caller's name, not both."""
    model, features = tiny_whisper(), torch.randn(1, 16, 1600, generator=torch.Generator().manual_seed(2))
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.5)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(input_features=features, decoder_input_ids=torch.tensor([[1, 5]]), past_key_values=None)
    assert not [w for w in caught if "Both" in str(w.message)]  # transformers 5.2x: both names set, one ignored
    assert isinstance(getattr(out, cache_argument(model)), AudioKVEncoderDecoderCache)
