"""Text encoding for every path of the runtime: txt2img batches, img2img and ComfyUI's CLIPTextEncode.

- :func:`encode_texts` gives each text's embeddings exactly as diffusers' ``encode_prompt`` does (SD 1.x/2.x and
  SDXL, CLIP skip included), but encodes each distinct text once: recent texts stay in a :class:`TextCache` (the
  negative prompt, the same for most tasks, costs nothing after its first batch).
- With CUDA graphs on (``Optimizations.text_graphs``) the encoders run as :class:`EncoderGraphs`: one graph replay per
  encoder call instead of hundreds of kernel launches. Eager, SDXL's two encoders took 54 ms for one prompt on an H200
  (launch-bound: the matrix work is under a millisecond), more than the 32 ms by which batch-1 SDXL missed 1 s.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

TEXT_CACHE_SIZE = 256  # texts whose embeddings a pipeline keeps (about 300 KB each for SDXL, 60 KB for SD1.5)


class TextCache:
    """The text embeddings of a pipeline's recent texts, least recently used first out.

    A text is encoded once while it keeps coming back: the negative prompt (the same for most tasks) and any prompt
    that repeats. Keys are ``(text, clip_skip)``; values are ``(embeds, pooled)`` rows of one text (``pooled`` only
    for SDXL). Thread-safe.
    """

    def __init__(self, size: int = TEXT_CACHE_SIZE) -> None:
        self.size = size
        self._rows: OrderedDict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of(cls, pipe: Any) -> TextCache:
        """The cache of the pipeline's text encoder (made on first use; pipelines that share the encoder, such as an
        img2img view of the same model, share it)."""
        owner = _encoders(pipe)[0][1]
        cache = getattr(owner, "_sdlab_text_cache", None)
        if cache is None:
            cache = owner._sdlab_text_cache = cls()
        return cache

    def __reduce__(self) -> tuple[type[TextCache], tuple[int]]:
        return type(self), (self.size,)  # a copied (or pickled) encoder starts with an empty cache

    def get(self, key: tuple[str, int | None]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        with self._lock:
            row = self._rows.get(key)
            if row is not None:
                self._rows.move_to_end(key)
            return row

    def put(self, key: tuple[str, int | None], row: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        with self._lock:
            self._rows[key] = row
            self._rows.move_to_end(key)
            while len(self._rows) > self.size:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)


class EncoderGraphs:
    """A pipeline's text encoders replayed as CUDA graphs.

    One graph per (encoder, rows), rows a power of two up to ``max_rows`` (calls with fewer texts are padded, more
    are split), captured on first use: two eager calls on a side stream, then the capture. An encoder that cannot be
    captured (one that synchronises with the host, say) stays eager, with one warning. Replays are serialised: a
    graph's outputs live in fixed memory, copied out before the next replay.
    """

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max(1, max_rows)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, Any]] = {}
        self._eager: set[int] = set()
        self._lock = threading.Lock()

    def _rows(self, n: int) -> int:
        rows = 1
        while rows < n:
            rows *= 2
        return min(rows, self.max_rows)

    def _capture(self, encoder: Any, rows: int, length: int, device: torch.device) -> Any:
        ids = torch.zeros(rows, length, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # lazy initialisation (cuBLAS workspaces, kernels) happens outside the graph
                encoder(ids, output_hidden_states=True)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads' CUDA work may go on
            out = encoder(ids, output_hidden_states=True)
        return graph, ids, out

    def run(self, encoder: Any, ids: torch.Tensor, hidden_index: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(output[0], hidden_states[hidden_index])`` of ``encoder(ids, output_hidden_states=True)``, copied out."""
        if id(encoder) in self._eager:
            return _eager_outputs(encoder, ids, hidden_index)
        if len(ids) > self.max_rows:
            parts = [self.run(encoder, ids[i : i + self.max_rows], hidden_index) for i in range(0, len(ids), self.max_rows)]
            rests: list[Any] = [p[1] for p in parts]
            return torch.cat([p[0] for p in parts]), None if hidden_index is None else torch.cat(rests)
        n, rows = len(ids), self._rows(len(ids))
        with self._lock:
            key = (id(encoder), rows)
            if key not in self._graphs:
                try:
                    self._graphs[key] = self._capture(encoder, rows, ids.shape[1], ids.device)
                except Exception as exc:  # noqa: BLE001 - an encoder that cannot be captured still works eagerly
                    self._eager.add(id(encoder))
                    logger.warning("text encoder %s runs eagerly: CUDA graph capture failed (%s: %s)",
                                   type(encoder).__name__, type(exc).__name__, exc)
                    return _eager_outputs(encoder, ids, hidden_index)
            graph, static_ids, out = self._graphs[key]
            static_ids[:n].copy_(ids)
            static_ids[n:].copy_(ids[-1:].expand(rows - n, -1))
            graph.replay()
            hidden = None if hidden_index is None else out.hidden_states[hidden_index][:n].clone()
            return out[0][:n].clone(), hidden


def _eager_outputs(encoder: Any, ids: torch.Tensor, hidden_index: int | None,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    out = encoder(ids, attention_mask=mask, output_hidden_states=hidden_index is not None)
    return out[0], None if hidden_index is None else out.hidden_states[hidden_index]


def _encoders(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, encoder) pairs in diffusers' order: SD one; SDXL CLIP ViT-L then OpenCLIP bigG (a refiner has only
    the second)."""
    pairs = []
    if getattr(pipe, "text_encoder", None) is not None:
        pairs.append((pipe.tokenizer, pipe.text_encoder))
    if getattr(pipe, "text_encoder_2", None) is not None:
        pairs.append((pipe.tokenizer_2, pipe.text_encoder_2))
    return pairs


def _encode_fresh(pipe: Any, texts: list[str], clip_skip: int | None, device: Any) -> tuple[Any, Any]:
    """``(embeds, pooled)`` of ``texts`` as prompts, computed as diffusers' ``encode_prompt`` computes them (pooled only
    for SDXL; textual-inversion tokens aside, which the runtime does not load).

    SD: the last hidden state, or under CLIP skip the state ``clip_skip`` layers before it through the final layer
    norm (diffusers reaches that norm through ``text_encoder.text_model``, which transformers 5 no longer has).
    SDXL: each encoder's penultimate state (``clip_skip`` + 2 from the end), concatenated; the pooled vector is bigG's
    projected output.
    """
    xl = getattr(pipe, "text_encoder_2", None) is not None
    graphs: EncoderGraphs | None = getattr(pipe, "_sdlab_text_graphs", None)
    parts: list[Any] = []
    pooled = None
    for tokenizer, encoder in _encoders(pipe):
        tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        ids = tokens.input_ids.to(device)
        masked = not xl and getattr(encoder.config, "use_attention_mask", False)
        if xl:
            index: int | None = -(clip_skip + 2) if clip_skip is not None else -2
        else:
            index = None if clip_skip is None else -(clip_skip + 1)
        if graphs is not None and not masked:
            first, hidden = graphs.run(encoder, ids, index)
        else:
            first, hidden = _eager_outputs(encoder, ids, index, tokens.attention_mask.to(device) if masked else None)
        if xl:
            if pooled is None and first.ndim == 2:
                pooled = first
            parts.append(hidden)
        elif hidden is None:
            parts.append(first)
        else:
            parts.append(getattr(encoder, "text_model", encoder).final_layer_norm(hidden))
    embeds = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
    dtype = (pipe.text_encoder_2 if xl else pipe.text_encoder).dtype
    return embeds.to(dtype=dtype, device=device), pooled


@torch.inference_mode()
def encode_texts(pipe: Any, texts: Sequence[str], clip_skip: int | None = None, device: Any = None) -> tuple[Any, Any]:
    """The embeddings of ``texts``, a row per text in order: ``(embeds, pooled)``, pooled only for SDXL; equal to
    diffusers' ``encode_prompt`` of each text as a prompt.

    Texts in the pipeline's :class:`TextCache` are not encoded again; the others are encoded together in one call
    (each distinct text once) and kept. The rows are inference tensors, as the batch loop's are.
    """
    if not texts:
        raise ValueError("encode_texts needs at least one text")
    cache = TextCache.of(pipe)
    device = device if device is not None else pipe._execution_device
    rows: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    misses = []
    for text in dict.fromkeys(texts):
        row = cache.get((text, clip_skip))
        if row is None:
            misses.append(text)
        else:
            rows[text] = row
    if misses:
        embeds, pooled = _encode_fresh(pipe, misses, clip_skip, device)
        for i, text in enumerate(misses):
            rows[text] = (embeds[i : i + 1].clone(), None if pooled is None else pooled[i : i + 1].clone())
            cache.put((text, clip_skip), rows[text])
    embeds = torch.cat([rows[text][0] for text in texts])
    pooleds = [rows[text][1] for text in texts]
    return embeds, None if pooleds[0] is None else torch.cat(pooleds)  # type: ignore[arg-type]


def encode_prompts(pipe: Any, prompts: list[str], negatives: list[str], cfg: bool, clip_skip: int | None, device: Any):
    """Text embeddings ``(cond, uncond, pooled, uncond_pooled)``, as diffusers' ``encode_prompt`` gives them (the last
    two only for SDXL), from :func:`encode_texts`. Negative prompts ignore ``clip_skip``, as in diffusers."""
    n = len(prompts)
    if not cfg:
        cond, pooled = encode_texts(pipe, prompts, clip_skip, device)
        return cond, None, pooled, None
    if clip_skip is None:  # prompts and negatives in one encoder call
        embeds, pooled = encode_texts(pipe, [*prompts, *negatives], None, device)
        return embeds[:n], embeds[n:], *((None, None) if pooled is None else (pooled[:n], pooled[n:]))
    cond, pooled = encode_texts(pipe, prompts, clip_skip, device)
    uncond, uncond_pooled = encode_texts(pipe, negatives, None, device)
    return cond, uncond, pooled, uncond_pooled


def prompt_embeds(pipe: Any, prompts: list[str], negatives: list[str], *, cfg: bool,
                  clip_skip: int | None = None) -> dict[str, Any]:
    """Keyword arguments for a diffusers pipeline call in place of ``prompt``, ``negative_prompt`` and ``clip_skip``:
    the same embeddings, from :func:`encode_texts` (cached, and CLIP skip that works with transformers 5)."""
    cond, uncond, pooled, uncond_pooled = encode_prompts(pipe, prompts, negatives, cfg, clip_skip,
                                                         pipe._execution_device)
    kwargs = {"prompt_embeds": cond, "negative_prompt_embeds": uncond, "pooled_prompt_embeds": pooled,
              "negative_pooled_prompt_embeds": uncond_pooled}
    return {k: v for k, v in kwargs.items() if v is not None}
