"""The project's own CLIP-style byte-level BPE vocabulary.

Stable Diffusion's text encoder expects a CLIP tokenizer: byte-level BPE where the
last symbol of each word carries a ``</w>`` suffix. We cannot download OpenAI's
vocabulary, so we learn a small one here, deterministically, from a built-in word
list. The layout mirrors CLIP's ``vocab.json``/``merges.txt``:

1. the 256 byte-level symbols,
2. the same 256 symbols with ``</w>`` appended,
3. one token per learned merge, in merge order,
4. ``<|startoftext|>`` and ``<|endoftext|>``.

Because every byte has a token, any text can be encoded; the merges only make
common prompt words short.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MODEL_MAX_LENGTH = 77

# Words that show up in image prompts. Order and spelling matter: changing this
# text changes the vocabulary and therefore every model built afterwards.
CORPUS = """
a an the of and with in on at by for from to into over under near behind beside
red orange yellow green blue purple violet pink brown black white grey gray gold
silver cyan magenta teal crimson scarlet azure emerald amber ivory golden pastel
dark light bright pale deep vivid soft warm cool glowing shiny matte colorful
cat dog fox wolf bear bird eagle owl horse deer rabbit lion tiger fish whale
dragon unicorn robot knight wizard witch princess king queen girl boy man woman
child person people portrait face eyes hair smile hands figure crowd soldier
house castle tower city street road bridge village temple church ruins room
kitchen garden forest tree trees flower flowers rose leaf leaves grass field
mountain mountains hill valley river lake sea ocean beach island desert snow
ice rain storm cloud clouds sky sun moon star stars night day sunset sunrise
morning evening winter summer autumn spring fire water stone rock sand wood
car ship boat train plane rocket space planet galaxy nebula universe world
photo photograph painting drawing sketch illustration render art artwork style
oil watercolor acrylic pencil ink charcoal digital pixel anime cartoon comic
realistic photorealistic hyperrealistic detailed intricate highly ultra high
quality resolution sharp focus blurry bokeh depth lighting light shadow shadows
cinematic dramatic epic beautiful cute scary spooky moody dreamy surreal
fantasy science fiction futuristic cyberpunk steampunk medieval ancient modern
vintage retro minimal minimalist abstract geometric pattern texture background
landscape cityscape seascape still life closeup wide angle view camera lens
studio volumetric ambient rim neon sunlight moonlight candle lamp glow fog mist
smoke dust rays reflection reflections water surface wet dry old new young
big small large tiny huge giant little long short tall round square sitting
standing running flying walking sleeping looking holding wearing playing
dress coat hat crown armor sword shield book cup table chair window door
masterpiece trending artstation octane unreal engine concept award winning
by artist greg rutkowski monet van gogh picasso rembrandt hokusai
one two three four five six seven eight nine ten many several
is are was be this that it its as or not very most best top
circle circles squares triangle triangles bottom left right middle
"""


def bytes_to_unicode() -> dict[int, str]:
    """Return CLIP/GPT-2's reversible byte → printable-unicode table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _word_symbols(word: str, byte_map: dict[int, str]) -> tuple[str, ...]:
    chars = [byte_map[b] for b in word.encode("utf-8")]
    chars[-1] = chars[-1] + "</w>"
    return tuple(chars)


def learn_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Learn up to ``num_merges`` BPE merges from ``words``.

    Ties are broken lexicographically so the result depends only on the input.
    """
    byte_map = bytes_to_unicode()
    counts = Counter(_word_symbols(w, byte_map) for w in words if w)
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, freq in counts.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, freq in counts.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += freq
        counts = merged
    return merges


def build_vocab(num_merges: int = 1000) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build the CLIP-layout vocabulary and merges from :data:`CORPUS`."""
    merges = learn_merges(CORPUS.split(), num_merges)
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    tokens += [a + b for a, b in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for tok in tokens:
        # A merge can reproduce an existing token; keep the first id like CLIP does.
        vocab.setdefault(tok, len(vocab))
    return vocab, merges


def write_tokenizer(out_dir: Path, num_merges: int = 1000) -> dict[str, int]:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs into ``out_dir``.

    The folder loads with ``CLIPTokenizer.from_pretrained(out_dir, local_files_only=True)``.
    Returns the vocabulary so the caller can size the text encoder.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(num_merges)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return vocab
