"""Text decoder: causal transformer over word tokens, cross-attending to the image tokens.

One decoder serves captioning and VQA; the task token in the prompt selects the behaviour.
Greedy decoding keeps a KV cache of the self-attention keys/values and computes the
cross-attention keys/values of the image once.

The context is ``max_text_len`` positions: a prompt must leave at least one free, or
:meth:`TextDecoder.generate` refuses it with :class:`PromptTooLongError` before building any
tensor (the masks grow with the square of the prompt). Each row of a batch may carry a stop
signal (anything with ``is_set()``, e.g. ``threading.Event``): it is read before every decode
step, a stopped row is finished as it stands, and the loop ends when every row is finished, so
a caller that gave up on a request frees the model at the next token.

Confidence: pass ``scores=[]`` and it is filled with one mean log-probability per row over the
tokens the row emitted (``<eos>`` included), the decoder's own belief in its greedy output. Only
then is a log-softmax computed per step; the default path stays an argmax over the logits.

Constrained decoding: ``allowed(row, emitted)`` (e.g. ``constraints.TaskConstraints.allowed``
for the row's task) returns the token ids row ``row`` may emit after the ids it has emitted; the
greedy token is then the argmax over those only. Scores stay the unmasked model's belief. An
``allowed`` that is also a :class:`StepConstraint` (``constraints.RowConstraints``) is stepped as
tensors by the cached path: one masked argmax and one state lookup per step for the whole batch.

Example::

    stop = [threading.Event() for _ in prompts]
    out = decoder.generate(prompts, image_tokens, 32, eos_id, pad_id, stop=stop)
    # another thread: stop[0].set() -> row 0 ends at its next step
    scores: list[float] = []
    decoder.generate(prompts, image_tokens, 32, eos_id, pad_id, scores=scores)  # scores[i] <= 0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, cast

import torch
from torch import Tensor, nn

from mobile_multimodal.model.layers import DecoderBlock, KVCache
from mobile_multimodal.model.model_config import ModelConfig
from mobile_multimodal.model.model_errors import PromptTooLongError
from mobile_multimodal.model.weight_reuse import reuse_weights


class StopSignal(Protocol):
    """Set when the caller no longer wants a row's output (``threading.Event`` is one)."""

    def is_set(self) -> bool: ...


class StepConstraint(Protocol):
    """A constraint kept as per-row automaton states (see ``constraints.RowConstraints``)."""

    def __call__(self, row: int, emitted: list[int]) -> Sequence[int]: ...
    def initial(self, device: torch.device) -> Tensor: ...
    def pick(self, logits: Tensor, states: Tensor) -> tuple[Tensor, Tensor]: ...


Stops = Sequence[StopSignal | None] | None
Allowed = Callable[[int, list[int]], Sequence[int]] | None


def _greedy(logits: Tensor, allowed: Allowed, emitted: list[list[int]]) -> Tensor:
    """argmax per row (B, V) -> (B,), over the row's allowed tokens when ``allowed`` is given
    (the first maximum on ties, as ``argmax`` does)."""
    if allowed is None:
        return logits.argmax(-1)
    mask = torch.full_like(logits, float("-inf"))
    for i, seq in enumerate(emitted):
        mask[i, list(allowed(i, seq))] = 0.0
    return (logits + mask).argmax(-1)


def _for_row(allowed: Allowed, row: int) -> Allowed:
    """``allowed`` for a batch of one holding row ``row`` of the caller's batch."""
    if allowed is None:
        return None
    return lambda _, emitted: allowed(row, emitted)


def _stopped(stop: Stops, b: int) -> list[bool]:
    if stop is None:
        return [False] * b
    return [s is not None and s.is_set() for s in stop]


def _mean_logprobs(step_logits: list[Tensor], step_tokens: list[Tensor], lengths: list[int]) -> list[float]:
    """Mean log-probability of each row's first ``lengths[i]`` chosen tokens, from the logits
    (B, V) and tokens (B,) of every step, in one log-softmax over all of them."""
    if not step_logits:
        return [0.0] * len(lengths)
    logp = torch.stack(step_logits).float().log_softmax(-1)  # (steps, B, V)
    chosen = logp.gather(2, torch.stack(step_tokens)[..., None]).squeeze(2).cpu()  # (steps, B)
    return [float(chosen[:n, i].mean()) if n else 0.0 for i, n in enumerate(lengths)]


class TextDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig, token_embedding: nn.Embedding) -> None:
        super().__init__()
        self.tok = token_embedding  # shared with the retrieval text encoder and tied to the output
        self.pos = nn.Embedding(cfg.max_text_len, cfg.dim)
        # GPT-2's scale, the token embedding's: nn.Embedding's default N(0, 1) rows are ~12x
        # longer than the tokens' (dim 160), and a word's identity drowned in its position;
        # the v1 model answered "is there a red star ?" and "... a gray circle ?" alike.
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(
            [DecoderBlock(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.decoder_layers)]
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.max_len = cfg.max_text_len
        # Bytes of the largest KV cache (self- and cross-attention) a generation has held: what
        # decoding really keeps beside the weights (observability reads it; the model logs nothing).
        self.peak_cache_bytes = 0

    def layers(self) -> list[DecoderBlock]:
        return [blk for blk in self.blocks if isinstance(blk, DecoderBlock)]

    def image_kv(self, image_tokens: Tensor) -> list[KVCache]:
        return [blk.cross_attn.project_kv(image_tokens) for blk in self.layers()]

    def logits(self, h: Tensor) -> Tensor:
        return self.norm(h) @ self.tok.weight.T

    def forward(self, ids: Tensor, image_tokens: Tensor, key_valid: Tensor | None = None) -> Tensor:
        """Teacher-forced pass. ids: (B, T); key_valid: (B, T) bool, False at padding.
        Returns logits (B, T, V)."""
        t = ids.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence of {t} tokens exceeds max_text_len {self.max_len}")
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        mask = causal[None, None]
        if key_valid is not None:
            mask = mask & key_valid[:, None, None, :]
            # a padded query row may have no valid key; let it attend to itself to avoid NaN
            mask = mask | torch.eye(t, dtype=torch.bool, device=ids.device)[None, None]
        positions = torch.arange(t, device=ids.device)
        x = self.tok(ids) + self.pos(positions)[None]
        kv = self.image_kv(image_tokens)
        for blk, ikv in zip(self.layers(), kv, strict=True):
            x, _ = blk(x, mask, ikv)
        return self.logits(x)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        image_tokens: Tensor,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        use_cache: bool = True,
        stop: Stops = None,
        scores: list[float] | None = None,
        allowed: Allowed = None,
        prefix_scores: tuple[int, list[float]] | None = None,
    ) -> list[list[int]]:
        """Greedy decoding of a batch of prompts (left-padded to a common length), at most
        ``max_new_tokens`` each and never past the context. ``stop``: one signal (or None) per
        prompt, read before every step; a stopped row keeps the tokens it has. ``scores``: when
        given (an empty list), filled with each row's mean token log-probability (0.0 for a row
        that emitted nothing). ``prefix_scores`` ``(n, [])``: the same over each row's first ``n``
        tokens only (what a decode stopped after ``n`` tokens would score, at no extra step).
        ``allowed``: see the module doc."""
        if not prompts:
            return []
        if stop is not None and len(stop) != len(prompts):
            raise ValueError(f"{len(stop)} stop signals for {len(prompts)} prompts")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        longest = max(len(p) for p in prompts)
        if longest < 1:
            raise ValueError("a prompt must have at least one token")
        if longest > self.max_len - 1:
            raise PromptTooLongError(
                f"a prompt of {longest} tokens leaves no room to generate: the decoder's context "
                f"is {self.max_len} tokens (max_text_len)",
                tokens=longest,
                limit=self.max_len - 1,
            )
        max_new_tokens = min(max_new_tokens, self.max_len - longest)  # >= 1, by the check above
        if all(_stopped(stop, len(prompts))):
            for filled in (scores, prefix_scores[1] if prefix_scores else None):
                if filled is not None:
                    filled[:] = [0.0] * len(prompts)
            return [[] for _ in prompts]
        # every step runs every layer: packed (quantized) layers dequantize once per call, not per token
        with reuse_weights():
            if not use_cache:
                return self._generate_uncached(
                    prompts, image_tokens, max_new_tokens, eos_id, stop, scores, allowed, prefix_scores
                )
            return self._generate_cached(
                prompts, image_tokens, max_new_tokens, eos_id, pad_id, stop, scores, allowed, prefix_scores
            )

    def prefill(
        self, prompts: list[list[int]], image_tokens: Tensor, pad_id: int
    ) -> tuple[list[KVCache], list[KVCache], Tensor, Tensor, Tensor]:
        """The prompts' pass, left-padded to a common length: each layer's self-attention KV
        cache, the image's cross-attention K/V, the key-valid mask (B, T), each prompt token's
        position (B, T; a row counts its own) and the logits after the last prompt token (B, V).
        ``generate`` decodes on from here, as does ``decode_batch.DecodeBatch`` for joining rows."""
        device = image_tokens.device
        b, plen = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((b, plen), pad_id, dtype=torch.long, device=device)
        valid = torch.zeros(b, plen, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            ids[i, plen - len(p) :] = torch.tensor(p, device=device)
            valid[i, plen - len(p) :] = True
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(plen, plen, dtype=torch.bool, device=device).tril()
        mask = causal[None, None] & valid[:, None, None, :]
        mask = mask | torch.eye(plen, dtype=torch.bool, device=device)[None, None]
        image_kv = self.image_kv(image_tokens)
        x = self.tok(ids) + self.pos(positions)
        caches: list[KVCache] = []
        for blk, kv in zip(self.layers(), image_kv, strict=True):
            x, cache = blk(x, mask, kv)
            caches.append(cache)
        return caches, image_kv, valid, positions, self.logits(x[:, -1])

    def _generate_cached(
        self,
        prompts: list[list[int]],
        image_tokens: Tensor,
        max_new_tokens: int,
        eos_id: int,
        pad_id: int,
        stop: Stops,
        scores: list[float] | None = None,
        allowed: Allowed = None,
        prefix_scores: tuple[int, list[float]] | None = None,
    ) -> list[list[int]]:
        b = len(prompts)
        device = image_tokens.device
        caches, ikv, valid, positions, logits = self.prefill(prompts, image_tokens, pad_id)
        track = scores is not None or prefix_scores is not None
        out = [[] for _ in range(b)]  # type: list[list[int]]
        stepped = cast(StepConstraint, allowed) if hasattr(allowed, "pick") else None
        if stepped is not None:
            states = stepped.initial(device)
            next_tok, states = stepped.pick(logits, states)
        else:
            next_tok = _greedy(logits, allowed, out)
        # for the scores: each step's logits (B, V) and tokens (B,), scored once at the end; a
        # row's tokens are its first len(out[i]) steps
        step_logits: list[Tensor] = []
        step_tokens: list[Tensor] = []
        done = torch.zeros(b, dtype=torch.bool, device=device)
        pos = positions[:, -1]
        for step in range(max_new_tokens):
            if stop is not None:
                done |= torch.tensor(_stopped(stop, b), device=device)
            for i in range(b):
                if not done[i]:
                    out[i].append(int(next_tok[i]))
            if track:
                step_logits.append(logits)
                step_tokens.append(next_tok)
            done |= next_tok == eos_id
            # the last token needs no step after it (nor a position past the context)
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            pos = pos + 1
            valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=device)], dim=1)
            step_mask = valid[:, None, None, :]
            x = self.tok(next_tok)[:, None] + self.pos(pos)[:, None]
            for li, (blk, kv) in enumerate(zip(self.layers(), ikv, strict=True)):
                x, caches[li] = blk(x, step_mask, kv, self_cache=caches[li])
            logits = self.logits(x[:, -1])
            if stepped is not None:
                next_tok, states = stepped.pick(logits, states)
            else:
                next_tok = _greedy(logits, allowed, out)
        if scores is not None:
            scores[:] = _mean_logprobs(step_logits, step_tokens, [len(o) for o in out])
        if prefix_scores is not None:
            n, filled = prefix_scores
            filled[:] = _mean_logprobs(step_logits, step_tokens, [min(len(o), n) for o in out])
        self.peak_cache_bytes = max(
            self.peak_cache_bytes,
            sum(t.numel() * t.element_size() for c in (*caches, *ikv) for t in c),
        )
        return out

    def _generate_uncached(
        self,
        prompts: list[list[int]],
        image_tokens: Tensor,
        max_new_tokens: int,
        eos_id: int,
        stop: Stops,
        scores: list[float] | None = None,
        allowed: Allowed = None,
        prefix_scores: tuple[int, list[float]] | None = None,
    ) -> list[list[int]]:
        """Reference path without a KV cache: re-runs the whole sequence each step. Used to check
        the cached path and to measure what the cache saves."""
        out = []
        means: list[float] = []
        prefix_means: list[float] = []
        n_prefix = prefix_scores[0] if prefix_scores else 0
        for i, p in enumerate(prompts):
            seq = list(p)
            gen: list[int] = []
            total = 0.0
            prefix_total = 0.0
            for _ in range(max_new_tokens):
                if _stopped(stop, len(prompts))[i]:
                    break
                ids = torch.tensor([seq], device=image_tokens.device)
                logp = self.forward(ids, image_tokens[i : i + 1])[0, -1].float().log_softmax(-1)
                nxt = int(_greedy(logp[None], _for_row(allowed, i), [gen])[0])
                total += float(logp[nxt])
                if len(gen) < n_prefix:
                    prefix_total += float(logp[nxt])
                gen.append(nxt)
                if nxt == eos_id:
                    break
                seq.append(nxt)
            out.append(gen)
            means.append(total / len(gen) if gen else 0.0)
            prefix_means.append(prefix_total / min(len(gen), n_prefix) if gen and n_prefix else 0.0)
        if scores is not None:
            scores[:] = means
        if prefix_scores is not None:
            prefix_scores[1][:] = prefix_means
        return out
