"""rlhf-lab's own decode loop: the fast sampler behind ``rlhf_lab.generation.generate(sampler="fast")``.

One batch of rows (prompt, sample) is decoded as follows.

1. **Prefill once per distinct prompt.** The distinct prompts of the batch run through the model once (left
   padded, HF ``DynamicCache``); their keys/values become the batch's *prefix cache*, one copy per prompt.
2. **Cascade attention.** A decode step never copies a prompt's KV to its sample rows. Attention of a row splits
   into the prompt part (read once per prompt: the queries of all rows of a prompt form one matrix product
   against its keys) and the row's own response part (a preallocated buffer of ``max_new_tokens`` positions,
   written in place: no ``torch.cat`` per step). The two softmax parts merge exactly by their log-sum-exp:
   ``o = (e^{m_p} l_p o_p + e^{m_s} l_s o_s) / (e^{m_p} l_p + e^{m_s} l_s)`` with ``m`` the running max, ``l`` the
   sum of ``exp(s − m)`` and ``o`` the softmax-weighted values of each part.
   It is plugged in through transformers' ``AttentionInterface`` for the decode steps only, so LoRA / PEFT
   wrappers and the model's own projections, RoPE and MLP run unchanged.
3. **Compaction.** A row that stopped (stop id or its own token limit) leaves the batch at once: its response
   buffer rows are dropped (``index_select``), and a prompt with no live row left drops its prefix. Compute is
   spent on live rows only.
4. **Sampling by inverse CDF with one uniform per row and step.** ``p = softmax(s/T)``, ``c = cumsum(p)`` (in two
   levels: blocks of 256 tokens, then inside the chosen block), token = first index with ``c > u · c[-1]``: an
   exact draw from ``softmax(s/T)`` up to float rounding of ``p`` (a token of zero probability is never drawn). Each row owns its uniforms (a table drawn up front from a generator seeded by
   ``(seed, prompt, sample)``), so a row's tokens do not depend on which rows share its batch, on compaction,
   or on the batch size (up to float rounding of batched matrix products). Gumbel-max would need one uniform
   per vocabulary entry (49k per row and step) and per-row generators for the same independence.

The general processors (repetition penalty, ``min_new_tokens``, top-k, top-p) are applied only when asked, in
HF's order (penalty, stop-id mask, temperature, top-k, top-p) and with HF's formulas.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AttentionInterface

CASCADE_ATTENTION = "rlhf_lab_cascade"


class CascadeCache:
    """KV of a decode batch: a prefix per distinct prompt plus a preallocated response buffer per row.

    ``prefix_keys[l]``: ``[U, kv_heads, W, head_dim]`` (left-padded prompts, ``prefix_bias`` is −inf on the pads);
    ``suffix_keys[l]``: ``[B, kv_heads, max_new_tokens, head_dim]``, position ``t`` written at decode step ``t``.
    ``row_prompt[r]`` is the prefix of row ``r``; ``slot[r] = row_prompt[r] · rows_per_prompt + rank of r in it``.
    Only the methods HF's modelling code calls on a cache during a decode step are provided.
    """

    def __init__(self, prefix: list[tuple[torch.Tensor, torch.Tensor]], prefix_bias: torch.Tensor,
                 row_prompt: torch.Tensor, max_new_tokens: int):
        self.prefix_keys = [k for k, _ in prefix]
        self.prefix_values = [v for _, v in prefix]
        self.prefix_bias = prefix_bias  # [U, 1, 1, W]
        self.padded = bool(torch.isinf(prefix_bias).any())  # no mask at all for prompts of one length
        rows = len(row_prompt)
        _, kv_heads, _, head_dim = self.prefix_keys[0].shape
        like = self.prefix_keys[0]
        self.suffix_keys = [like.new_empty(rows, kv_heads, max_new_tokens, head_dim) for _ in prefix]
        self.suffix_values = [like.new_empty(rows, kv_heads, max_new_tokens, head_dim) for _ in prefix]
        self.step = 0  # suffix positions written before the current step
        self._set_rows(row_prompt)

    def _set_rows(self, row_prompt: torch.Tensor) -> None:
        self.row_prompt = row_prompt
        counts = torch.bincount(row_prompt, minlength=self.prefix_bias.shape[0])
        self.rows_per_prompt = int(counts.max())
        starts = torch.cumsum(counts, 0) - counts
        # rows of one prompt are contiguous in a planned batch, but rank them without relying on it
        order = torch.argsort(row_prompt, stable=True)
        rank = torch.empty_like(row_prompt)
        rank[order] = torch.arange(len(row_prompt)) - starts[row_prompt[order]]
        self.slot = row_prompt * self.rows_per_prompt + rank

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Writes this step's key/value (``[B, kv_heads, 1, head_dim]``) into the row buffers, in place."""
        self.suffix_keys[layer_idx][:, :, self.step] = key_states[:, :, -1]
        self.suffix_values[layer_idx][:, :, self.step] = value_states[:, :, -1]
        return key_states, value_states

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.prefix_bias.shape[-1] + self.step

    def _select(self, buffer: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # only the written positions are copied: compaction costs what one step's attention reads
        kept = buffer.new_empty(len(rows), *buffer.shape[1:])
        kept[:, :, : self.step] = buffer[rows, :, : self.step]
        return kept

    def keep(self, rows: torch.Tensor) -> None:
        """Compaction: keep only ``rows`` (in order); prompts left without a row lose their prefix."""
        self.suffix_keys = [self._select(k, rows) for k in self.suffix_keys]
        self.suffix_values = [self._select(v, rows) for v in self.suffix_values]
        row_prompt = self.row_prompt[rows]
        used = torch.unique(row_prompt)
        if len(used) < self.prefix_bias.shape[0]:
            self.prefix_keys = [k[used] for k in self.prefix_keys]
            self.prefix_values = [v[used] for v in self.prefix_values]
            self.prefix_bias = self.prefix_bias[used]
            self.padded = bool(torch.isinf(self.prefix_bias).any())
            remap = torch.full((int(self.row_prompt.max()) + 1,), -1, dtype=torch.long)
            remap[used] = torch.arange(len(used))
            row_prompt = remap[row_prompt]
        self._set_rows(row_prompt)


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q·kᵀ·scale + bias)·v`` and its log-sum-exp ``log Σ exp(q·kᵀ·scale + bias)`` (``[..., L, 1]``).

    On CPU one fused kernel (PyTorch's flash attention for CPU returns both); elsewhere the plain formula.
    """
    if query.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, False, attn_mask=bias, scale=scale)
        return out, lse.unsqueeze(-1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    lse = torch.logsumexp(scores, -1, keepdim=True)
    return torch.matmul(torch.exp(scores - lse), value), lse


def cascade_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs) -> tuple[torch.Tensor, None]:
    """One decode step's attention over (prompt prefix, own response), merged by log-sum-exp.

    With ``o_p, λ_p`` the prompt part's output and log-sum-exp and ``o_s, λ_s`` the response part's, attention over
    both is ``σ(λ_p − λ_s)·o_p + (1 − σ(λ_p − λ_s))·o_s``. ``query`` is ``[B, heads, 1, head_dim]``; the
    keys/values are read from the :class:`CascadeCache` passed as ``rlhf_cascade_cache``. Returns
    ``[B, 1, heads, head_dim]`` as HF attention functions do.
    """
    cache: CascadeCache = kwargs["rlhf_cascade_cache"]
    layer = module.layer_idx
    rows, heads, _, head_dim = query.shape
    prefix_k, prefix_v = cache.prefix_keys[layer], cache.prefix_values[layer]
    prompts, kv_heads, _, _ = prefix_k.shape
    group = heads // kv_heads  # GQA: query heads per KV head, handled by reshaping, never by repeating K/V
    scale = scaling if scaling is not None else head_dim**-0.5
    q = query.reshape(rows, kv_heads, group, head_dim)

    # prompt part: one [rows_per_prompt · group, W] attention per (prompt, KV head)
    per = cache.rows_per_prompt
    grouped = q.new_zeros(prompts * per, kv_heads, group, head_dim)
    grouped[cache.slot] = q
    grouped = grouped.view(prompts, per, kv_heads, group, head_dim).transpose(1, 2).reshape(
        prompts, kv_heads, per * group, head_dim)
    out_p, lse_p = attention_with_lse(grouped, prefix_k, prefix_v, cache.prefix_bias if cache.padded else None,
                                      scale)

    def to_rows(x: torch.Tensor) -> torch.Tensor:
        last = x.shape[-1]
        x = x.view(prompts, kv_heads, per, group, last).transpose(1, 2).reshape(prompts * per, kv_heads, group, last)
        return x[cache.slot]

    out_p, lse_p = to_rows(out_p), to_rows(lse_p)
    # own part: the response so far, this step's token included
    length = cache.step + 1
    out_s, lse_s = attention_with_lse(q, cache.suffix_keys[layer][:, :, :length],
                                      cache.suffix_values[layer][:, :, :length], None, scale)
    prompt_share = torch.sigmoid(lse_p - lse_s)
    out = out_s + (out_p - out_s) * prompt_share
    return out.reshape(rows, 1, heads, head_dim), None


AttentionInterface.register(CASCADE_ATTENTION, cascade_attention)


@contextlib.contextmanager
def _attention_implementation(model: torch.nn.Module, name: str) -> Iterator[None]:
    """Switch every config in ``model`` to attention implementation ``name`` for the block, then restore it."""
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs[id(config)] = config
    saved = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = name
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]


@dataclass
class DecodingConfig:
    """How to sample a response.

    The defaults are pure sampling from the policy — temperature 1, no top-p / top-k truncation, no penalty —
    which is what trlx (Coste et al. 2023) and RAFT-style rollouts use: the samples must come from the policy being
    optimised. ``top_k=0`` means no top-k filter. ``min_new_tokens`` forbids the stop tokens until that many
    tokens were produced. The papers' other settings are in ``generation.DECODING_PRESETS``.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    do_sample: bool = True
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0 or self.min_new_tokens < 0:
            raise ValueError("max_new_tokens and min_new_tokens must be >= 0")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 (got {self.temperature}); use do_sample=False for greedy"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (got {self.top_k}); 0 disables top-k")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")



def process_logits(scores: torch.Tensor, step: int, processing: DecodingConfig, stop_ids: torch.Tensor,
                   seen: torch.Tensor | None) -> torch.Tensor:
    """The distribution a row samples from at ``step``, as log-weights ``[B, V]`` (−inf = never).

    In HF's order: repetition penalty (CTRL: a seen token's logit ``x`` becomes ``x·p`` if ``x < 0`` else ``x/p``;
    ``seen`` = prompt and response tokens so far, padding excluded), stop ids forbidden while
    ``step < min_new_tokens``, then for sampling ``x / T``, top-k (keep the k largest), top-p (HF's rule: sort
    ascending, drop the tokens whose cumulative probability is ≤ 1 − top_p, always keep the largest).
    """
    if processing.repetition_penalty != 1.0 and seen is not None:
        penalty = processing.repetition_penalty
        scores = torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)
    if step < processing.min_new_tokens:
        scores = scores.index_fill(1, stop_ids, float("-inf"))
    if not processing.do_sample:
        return scores
    if processing.temperature != 1.0:
        scores = scores / processing.temperature
    if processing.top_k > 0 and processing.top_k < scores.shape[-1]:
        kth = torch.topk(scores, processing.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if processing.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - processing.top_p
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def draw(scores: torch.Tensor, uniforms: torch.Tensor | None, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and their log-probs under ``p = softmax(scores)``; greedy (argmax) when ``uniforms`` is None.

    Inverse CDF in two levels: the sums of ``p`` over blocks of ``block`` tokens give a short CDF ``C`` (float64);
    the block is the first ``b`` with ``C_b > u·C_last``, then the token is found the same way inside the block.
    ``P(j) = p_j / Σp`` up to float rounding of ``p`` itself; a token or block of zero probability is never drawn.
    One fused softmax and one block sum per step instead of a cumulative sum over the whole vocabulary.
    """
    if uniforms is None:
        tokens = scores.argmax(-1)
        return tokens, torch.log_softmax(scores, -1).gather(1, tokens[:, None]).squeeze(1)
    rows, vocab = scores.shape
    probs = torch.softmax(scores, -1)
    pad = (-vocab) % block
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).view(rows, -1, block)
    block_cdf = blocks.sum(-1).to(torch.float64).cumsum(-1)  # [rows, vocab / block]
    total = block_cdf[:, -1]
    target = uniforms.to(torch.float64) * total
    # the first block whose CDF exceeds the target, never past the last block of non-zero mass
    last_block = (block_cdf < total[:, None]).sum(-1)
    chosen = torch.minimum(torch.searchsorted(block_cdf, target[:, None], right=True).squeeze(1), last_block)
    before = torch.where(chosen > 0, block_cdf.gather(1, (chosen - 1).clamp(min=0)[:, None]).squeeze(1), 0.0)
    inner = blocks[torch.arange(rows, device=scores.device), chosen].to(torch.float64).cumsum(-1)
    last_inner = (inner < inner[:, -1:]).sum(-1)
    offset = torch.minimum(torch.searchsorted(inner, (target - before)[:, None], right=True).squeeze(1), last_inner)
    tokens = chosen * block + offset
    return tokens, torch.log(probs.gather(1, tokens[:, None]).squeeze(1))


def row_uniforms(seed: int, rows: Sequence[tuple[int, int]], steps: int) -> torch.Tensor:
    """``[rows, steps]`` float64 uniforms in [0, 1); row ``(prompt i, sample k)`` from a stream seeded by (seed, i, k)."""
    table = torch.empty(len(rows), max(steps, 1), dtype=torch.float64)
    generator = torch.Generator()
    for r, (i, k) in enumerate(rows):
        state = np.random.SeedSequence([seed % 2**64, i, k]).generate_state(1, dtype=np.uint64)[0] >> 1
        generator.manual_seed(int(state))
        table[r] = torch.rand(max(steps, 1), generator=generator, dtype=torch.float64)
    return table


def prefill_groups(lengths: Sequence[int], max_padding: float = 0.1) -> list[list[int]]:
    """Prompts (indices into ``lengths``) grouped for prefill so a group's left padding stays ≤ ``max_padding``.

    Prompts sorted longest first; a group grows while ``1 − Σ len / (count · max len)`` ≤ ``max_padding``.
    Rollouts of PPO / RAFT (one answer per prompt, prompt lengths spread over 60–256 tokens) spend most of their
    time in the prefill, where one padded batch would waste up to half the work.
    """
    order = sorted(range(len(lengths)), key=lambda u: -lengths[u])
    groups: list[list[int]] = []
    for u in order:
        if groups:
            group = groups[-1]
            longest = lengths[group[0]]
            real = sum(lengths[v] for v in group) + lengths[u]
            if 1 - real / (longest * (len(group) + 1)) <= max_padding:
                group.append(u)
                continue
        groups.append([u])
    return groups


def _accepts(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _output_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _layer_kv(cache, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache[layer][0], cache[layer][1]


@dataclass
class RowResult:
    token_ids: list[int]
    finished: bool
    logprobs: list[float]


def decode_batch(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    rows: Sequence[tuple[int, int]],
    limits: Sequence[int],
    stop_ids: Sequence[int],
    processing: DecodingConfig,
    seed: int,
    share_prefix: bool = True,
    pad_id: int = 0,
) -> list[RowResult]:
    """Decode one batch: row ``r`` continues prompt ``prompt_ids[rows[r][0]]`` for at most ``limits[r]`` tokens.

    Stops a row right after its first stop id (once ``min_new_tokens`` allow one) or at its limit. Returns, per
    row, its tokens (stop id included), whether it stopped by itself, and each token's log-prob under the
    distribution it was drawn from. See the module docstring for the method.
    """
    device = next(model.parameters()).device
    rows = list(rows)
    # distinct prompts of the batch, in order of first appearance (one per row without share_prefix)
    keys = [i for i, _ in rows] if share_prefix else list(range(len(rows)))
    first: dict[int, int] = {}
    for r, key in enumerate(keys):
        first.setdefault(key, r)
    unique_prompts = [rows[r][0] for r in first.values()]
    row_prompt = torch.tensor([list(first).index(key) for key in keys], dtype=torch.long)
    lengths = [len(prompt_ids[i]) for i in unique_prompts]
    width = max(lengths)
    ids = torch.full((len(unique_prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(unique_prompts), width), dtype=torch.long)
    for u, i in enumerate(unique_prompts):
        ids[u, width - lengths[u]:] = torch.tensor(prompt_ids[i])
        mask[u, width - lengths[u]:] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)

    # logits of the last prompt position only (a PEFT wrapper passes the argument through to its base model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    extra = {"logits_to_keep": 1} if _accepts(base.forward, "logits_to_keep") else {}
    prefix: list[tuple[torch.Tensor, torch.Tensor]] = []
    last_logits = []
    for group in prefill_groups(lengths):
        # each group is left-padded to its own width and lands right-aligned in the batch's prefix buffers
        group_width = max(lengths[u] for u in group)
        output = model(input_ids=ids[group, width - group_width:].to(device),
                       attention_mask=mask[group, width - group_width:].to(device),
                       position_ids=position_ids[group, width - group_width:].to(device), use_cache=True, **extra)
        last_logits.append(output.logits[:, -1].float())
        prefill = _output_cache(output)
        num_layers = len(prefill.layers) if hasattr(prefill, "layers") else len(prefill)
        for layer in range(num_layers):
            keys, values = _layer_kv(prefill, layer)
            if len(prefix) <= layer:
                # zeros, not garbage, under the masked pads: a masked NaN would still poison the weighted sum
                shape = (len(unique_prompts), keys.shape[1], width, keys.shape[3])
                prefix.append((keys.new_zeros(shape), values.new_zeros(shape)))
            group_rows = torch.tensor(group, device=device)
            prefix[layer][0][group_rows, :, width - group_width:] = keys
            prefix[layer][1][group_rows, :, width - group_width:] = values
        del output, prefill
    order = [u for group in prefill_groups(lengths) for u in group]
    logits = torch.cat(last_logits)[torch.tensor(order).argsort().to(device)][row_prompt.to(device)]
    bias = torch.zeros((len(unique_prompts), 1, 1, width), dtype=prefix[0][0].dtype, device=device)
    bias.masked_fill_(mask[:, None, None, :].to(device) == 0, float("-inf"))

    max_new = max(limits)
    cache = CascadeCache(prefix, bias, row_prompt.to(device), max_new)
    stop_tensor = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    uniforms = row_uniforms(seed, rows, max_new).to(device) if processing.do_sample else None
    seen = None
    if processing.repetition_penalty != 1.0:
        seen = torch.zeros((len(rows), logits.shape[-1]), dtype=torch.bool, device=device)
        for r, (i, _) in enumerate(rows):
            seen[r, torch.tensor(prompt_ids[i], device=device)] = True

    live = torch.arange(len(rows), device=device)  # original row index of each live row
    positions = torch.tensor([len(prompt_ids[i]) for i, _ in rows], dtype=torch.long, device=device)
    limit_tensor = torch.tensor(list(limits), dtype=torch.long, device=device)
    tokens_out = torch.full((len(rows), max_new), -1, dtype=torch.long, device=device)
    logprobs_out = torch.zeros((len(rows), max_new), dtype=torch.float32, device=device)
    finished = torch.zeros(len(rows), dtype=torch.bool, device=device)
    counts = torch.zeros(len(rows), dtype=torch.long, device=device)

    with _attention_implementation(model, CASCADE_ATTENTION):
        for step in range(max_new):
            scores = process_logits(logits, step, processing, stop_tensor, None if seen is None else seen[live])
            tokens, logprobs = draw(scores, None if uniforms is None else uniforms[live, step])
            tokens_out[live, step] = tokens
            logprobs_out[live, step] = logprobs
            counts[live] = step + 1
            stopped = torch.isin(tokens, stop_tensor)
            finished[live] = stopped
            done = stopped | (step + 1 >= limit_tensor[live])
            if seen is not None:
                seen[live, tokens] = True
            if bool(done.all()):
                break
            cache.step = step  # response positions written so far; this step's token goes to position `step`
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                live, tokens = live[keep], tokens[keep]
                cache.keep(keep)
            logits = model(input_ids=tokens[:, None], position_ids=(positions[live] + step)[:, None],
                           cache=cache, use_cache=True, rlhf_cascade_cache=cache).logits[:, -1].float()
    tokens_list, logprobs_list = tokens_out.tolist(), logprobs_out.tolist()
    results = []
    for r in range(len(rows)):
        n = int(counts[r])
        results.append(RowResult(tokens_list[r][:n], bool(finished[r]), logprobs_list[r][:n]))
    return results


def estimate_bytes(model: torch.nn.Module, rows: int, prompts: int, width: int, max_new_tokens: int,
                   share_prefix: bool = True) -> int:
    """Peak bytes of one decode batch beyond the weights: KV cache, prefill activations, step logits.

    KV: ``2 · layers · kv_heads · head_dim · itemsize`` per position, over ``prompts · width`` prefix positions and
    ``rows · max_new_tokens`` response positions (the HF path fans the prefix out: ``rows · (width + new)``).
    Prefill: attention scores ``prompts · heads · width²`` and the MLP ``prompts · width · 3 · intermediate``.
    Step: ``rows · vocab`` logits in float32, their exp, float64 CDF and a penalty mask (≈ 21 bytes each).
    """
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 1)
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", 1)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", 4 * hidden)
    vocab = getattr(config, "vocab_size", 1)
    itemsize = next(model.parameters()).element_size()
    per_position = 2 * layers * kv_heads * head_dim * itemsize
    if share_prefix:
        kv = per_position * (prompts * width + rows * max_new_tokens)
    else:
        kv = per_position * rows * (width + max_new_tokens)
    prefill = prompts * (heads * width * width + 3 * width * intermediate + 2 * width * hidden) * 4
    step = rows * vocab * 21
    return int(kv + prefill + step)


def available_bytes() -> int:
    """Memory the process may still use: psutil's ``available`` if installed, else /proc/meminfo's MemAvailable."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            with open("/proc/meminfo", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return 1 << 62  # unknown: do not refuse
