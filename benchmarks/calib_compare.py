"""How much a calibration depends on its clips: ``python -m benchmarks.calib_compare A B --out FILE``.

Compares two head-score files of one model (say the shipped one and one
made on other speech): the rank correlation of their heads' scores, over
the whole model and inside each layer (what the head split reads), how many
of A's top-``k`` heads B also ranks in its top ``k``, and the fraction of
its tokens each layer keeps at each ratio under the layer split
(:func:`audiokv.budget.layer_keeps` at the default ``layer_prior``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from audiokv import AudioKVConfig
from audiokv.budget import layer_keeps, layer_shares
from audiokv.heads import HeadScores
from audiokv.provenance import environment
from audiokv.select import ranks


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman correlation of two ``[N]`` score vectors (ties broken by position)."""
    pair = torch.stack([ranks(a.double()), ranks(b.double())]).double()
    return float(torch.corrcoef(pair)[0, 1])


def compare(a: Tensor, b: Tensor, ratios: list[float], k: int = 8) -> dict:
    """The comparison of two ``[L, H]`` head-score tensors (see the module docstring)."""
    if a.shape != b.shape:
        raise ValueError(f"the files hold different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    k = min(k, a.numel())
    top = [set(s.flatten().topk(k).indices.tolist()) for s in (a, b)]
    strength = AudioKVConfig().layer_prior

    def keeps(scores: Tensor, ratio: float) -> list[float]:
        return layer_keeps(1 - ratio, layer_shares(scores.clamp_min(0).mean(-1), strength)).tolist()

    return {
        "rank_correlation": rank_correlation(a.flatten(), b.flatten()),
        "layer_rank_correlation": [rank_correlation(x, y) for x, y in zip(a, b, strict=True)],
        "k": k,
        "top_k_shared": len(top[0] & top[1]),
        "layer_keeps": {str(r): {"a": keeps(a, r), "b": keeps(b, r)} for r in ratios},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="head scores (.safetensors), e.g. the shipped file")
    parser.add_argument("b", type=Path, help="head scores of the same model made on other clips")
    parser.add_argument("--model", required=True, help="the model both files were made for")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    a, b = (HeadScores.load(p, model=args.model) for p in (args.a, args.b))
    result = {"model": args.model, "a": str(args.a), "b": str(args.b), "a_data": a.data, "b_data": b.data}
    result |= environment() | compare(a.scores, b.scores, args.ratios)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("rank_correlation", "top_k_shared")}))
    return result


if __name__ == "__main__":
    main()
