"""Independent references shared by the tests: plain loops, no audiokv code."""

import math

import torch


def merged_row(key, value, kept, lo, hi, valid=None):
    """One head's kept tokens after merging: ``(keys, values, log_mass)``, one entry per ``kept`` position.

    Every valid token in ``[lo, hi)`` joins the nearest kept token of the span on
    its left or on its right, whichever key is more cosine-similar (left on ties);
    a kept token's key and value become its group's means, its log mass the log
    of the group's size. Kept tokens outside the span stay as they are.
    """
    valid = torch.ones(key.shape[0], dtype=torch.bool) if valid is None else valid
    anchors = [int(i) for i in kept if lo <= i < hi and valid[i]]
    groups = {i: [] for i in anchors}
    cos = torch.nn.functional.cosine_similarity
    for t in range(lo, hi) if anchors else ():  # a span without kept tokens merges nothing
        if not valid[t]:
            continue
        left = max((i for i in anchors if i <= t), default=None)
        right = min((i for i in anchors if i >= t), default=None)
        if left is None or right is None:
            groups[left if right is None else right].append(t)
        else:
            sim_l, sim_r = cos(key[t], key[left], dim=0), cos(key[t], key[right], dim=0)
            groups[left if sim_l >= sim_r else right].append(t)
    keys, values, mass = key[kept].clone(), value[kept].clone(), torch.zeros(len(kept), dtype=key.dtype)
    for j, i in enumerate(kept.tolist()):
        if i in groups:
            keys[j], values[j] = key[groups[i]].mean(0), value[groups[i]].mean(0)
            mass[j] = math.log(len(groups[i]))
    return keys, values, mass


def kept_prompt(key, value, kept, runs, valid=None, merge=True):
    """One head's prompt as a compressed layer sees it: ``[T, D]`` keys, values and ``[T]`` logit bias.

    Evicted tokens get a bias of -inf; kept tokens hold their merged key and value
    (if ``merge``) and their log mass as bias. ``runs``: the ``(lo, hi)`` stretches
    of audio (one per clip) whose tokens merge, each within itself.
    """
    merged_key, merged_value = key.clone(), value.clone()
    bias = torch.full((key.shape[0],), float("-inf"), dtype=key.dtype)
    bias[kept] = 0.0
    for lo, hi in runs if merge else ():
        if hi > lo:
            inside = (kept >= lo) & (kept < hi)
            k, v, mass = merged_row(key, value, kept, lo, hi, valid)
            mine = kept[inside]
            merged_key[mine], merged_value[mine], bias[mine] = k[inside], v[inside], mass[inside]
    return merged_key, merged_value, bias


class KeptReference:
    """Dense fp64 attention over the tokens a module kept plus everything appended since.

    Built from the original prompt K/V and the module's selection, never from its
    pool; when the policy merges, kept audio tokens are merged by :func:`merged_row`.
    """

    def __init__(self, module, key, value, span=None, causal=True):
        bsz, heads, length = key.shape[:3]
        self.group = module.num_heads // heads
        self.scale = module.scaling
        self.causal = causal
        self.rows = []
        lo, hi = (0, length) if span is None else span
        merge = module.policy.merge and (span is not None or not causal)
        for b in range(bsz):
            for h in range(heads):
                idx = module.kept_indices[b, h, : module.budgets[b, h]]
                k, v = key[b, h].double(), value[b, h].double()
                if merge:
                    self.rows.append(list(merged_row(k, v, idx, lo, hi)))
                else:
                    self.rows.append([k[idx], v[idx], torch.zeros(len(idx), dtype=torch.float64)])

    def append(self, key, value):
        for r, row in enumerate(self.rows):
            b, h = divmod(r, key.shape[1])
            row[0] = torch.cat([row[0], key[b, h].double()])
            row[1] = torch.cat([row[1], value[b, h].double()])
            row[2] = torch.cat([row[2], torch.zeros(key.shape[2], dtype=torch.float64)])

    def attend(self, query):
        """Queries whose keys are the last ``q`` appended (causal), or that see every key."""
        bsz, hq, q_len, dim = query.shape
        heads = hq // self.group
        out = torch.empty(bsz, hq, q_len, dim, dtype=torch.float64)
        for r, (keys, values, mass) in enumerate(self.rows):
            b, h = divmod(r, heads)
            n = keys.shape[0]
            q = query[b, h * self.group : (h + 1) * self.group].double()
            logits = q @ keys.T * self.scale + mass
            last = n - q_len + torch.arange(q_len) if self.causal else torch.full((q_len,), n - 1)
            visible = torch.arange(n)[None, :] <= last[:, None]
            out[b, h * self.group : (h + 1) * self.group] = (
                torch.softmax(logits.masked_fill(~visible, -torch.inf), -1) @ values
            )
        return out

    def step(self, query, key, value):
        self.append(key, value)
        return self.attend(query)
