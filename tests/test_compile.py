"""A patched model's decode step under ``torch.compile``: one graph, no recompiles, the eager model's logits."""

import pytest
import torch
from calls import cached
from torch._dynamo.utils import counters
from transformers import Qwen2Config, Qwen2ForCausalLM

from audiokv import AudioKVConfig, apply_audiokv
from audiokv.cache import AudioKVCache

CONFIG = Qwen2Config(
    vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024,
)  # fmt: skip
PROMPT = 200


def decode(model, engines, compiled, steps):
    """Prefill eagerly, then ``steps`` greedy decode steps through ``compiled`` (or the eager forward).

    Returns the ``[steps, B, V]`` logits and the graphs dynamo compiled at the first step.
    """
    ids = torch.randint(3, 97, (2, PROMPT), generator=torch.Generator().manual_seed(0))
    cache = AudioKVCache(model.config, engines)
    logits, first = [], None
    with torch.no_grad():
        token = model(ids, **cached(model, cache), use_cache=True).logits[:, -1:].argmax(-1)
        if compiled is not None:
            model.forward = compiled  # the module's __call__, and so apply_audiokv's pre-hook, stay eager
        try:
            for pos in range(PROMPT, PROMPT + steps):
                if pos == PROMPT + 1:  # warm-up done: no more compiling from here
                    first = counters["stats"]["unique_graphs"]
                    counters.clear()
                out = model(
                    input_ids=token, **cached(model, cache), use_cache=True,
                    cache_position=torch.tensor([pos]), position_ids=torch.tensor([[pos]]).expand(2, 1),
                )  # fmt: skip
                token = out.logits[:, -1:].argmax(-1)
                logits.append(out.logits[:, -1])
        finally:
            model.__dict__.pop("forward", None)
    return torch.stack(logits), first


def test_the_decode_step_of_a_patched_model_is_one_graph_without_recompiles_over_256_steps():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(CONFIG).eval()
    cfg = AudioKVConfig(compression_ratio=0.5, window=8, page_size=16, decode_reserve=300)
    with apply_audiokv(model, cfg, kernel="flex") as handle:
        want, _ = decode(model, handle.engines, None, 256)
        # transformers' `kernels` hub keeps a context variable that its first compiled call in a process leaves
        # changed, so that call's graph is guarded out at the next step; one throwaway compiled step settles it
        decode(model, handle.engines, torch.compile(model.forward, backend="eager"), 2)
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(model.forward, fullgraph=True)  # fullgraph: a graph break is an error
        with torch._dynamo.config.patch(error_on_recompile=True):
            got, first = decode(model, handle.engines, compiled, 256)
        assert first == 1 and counters["stats"]["unique_graphs"] == 0  # one graph, at the first step
        assert all(e.pool.version == 0 for e in handle.engines.values())  # within the reserve: no growth
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_compiling_the_decode_step_with_the_cpu_rows_kernel_is_one_clear_error():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(CONFIG).eval()
    with apply_audiokv(model, AudioKVConfig(compression_ratio=0.5, window=8, page_size=16)) as handle:
        torch._dynamo.reset()
        compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
        with pytest.raises(Exception, match="kernel='flex'"):
            decode(model, handle.engines, compiled, 2)
