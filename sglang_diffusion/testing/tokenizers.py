"""Tokenizers built on the spot, with no hub: T5/UMT5 (Unigram), CLIP, Llama, Qwen2 and
Mistral (BPE), each wrapped in the transformers class the real model uses.

Every tokenizer learns the same small English corpus below. It holds the words of the
prompt templates that the diffusers pipelines wrap around a prompt, so that each of those
words is one token, as with the real tokenizers. The pipelines cut the template off by a
fixed token count, and ours match it: Qwen-Image's prefix is 34 tokens
(`prompt_template_encode_start_idx`), HunyuanVideo's 95 (`crop_start`).

BPE merges come from a small trainer of our own: the `tokenizers` trainer breaks ties in
hash order with an end-of-word suffix (CLIP), and a build must be byte-identical for a
given seed.
"""

from __future__ import annotations

import collections
import functools
import heapq
import string

from tokenizers import AddedToken
from tokenizers import pre_tokenizers as _pre_tokenizers

CORPUS = """system
user
assistant

Describe the video by detailing the following aspects: 1. The main content and theme of the video.
2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.
3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.
4. background environment, light, style and atmosphere.
5. camera angles, movements, and transitions used in the video:
Describe the image by detailing the color, shape, size, texture, quantity, text, spatial
relationships of the objects and background:
You are an AI that reasons about image descriptions. You give structured responses focusing
on object relationships, object attribution and actions without speculation.
A cat and a dog are dancing on the beach at sunset. An astronaut is riding a horse on the
moon. A monkey walks in a green forest with tall trees, while the camera slowly moves. A red
car drives down a city street at night in the rain, neon lights reflect in the water. Two
people talk in a small room; a woman smiles and a man laughs. Close up of a flower, high
quality, cinematic, realistic, detailed, bright, dark, blue sky, white clouds, mountains,
river, ocean waves, snow, fire, bird, fish, robot, portrait, photo, painting, anime, 4k.
bad quality, blurry, low resolution, worst, static, overexposed, deformed, ugly, extra
fingers, still picture, subtitles, watermark, messy background, three legs, many people,
walking backwards, dance, dances, jumps, runs, flies, sits, stands, looks, holds, opens.
"""

# The Llama-3 / Mistral / Qwen2 special tokens the diffusers templates and chat formats use.
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)  # fmt: skip
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<pad>",
)  # fmt: skip
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Mistral's tekken layout: the control tokens first, [IMG] at 10 and <pad> at 11 as in Mistral3's config.
MISTRAL_SPECIAL_TOKENS = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]",
    "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]",
)  # fmt: skip

# Mistral Small 3.1's chat format, reduced to what Flux2Pipeline sends: a system and a
# user turn whose content is a list of text (and image) blocks.
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['content'] is string %}{%- set blocks = [{'type': 'text', 'text': message['content']}] %}"
    "{%- else %}{%- set blocks = message['content'] %}{%- endif %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' }}{%- endif %}"
    "{%- for block in blocks %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] == 'image' %}{{- '[IMG]' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if message['role'] == 'system' %}{{- '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[/INST]' }}"
    "{%- else %}{{- eos_token }}{%- endif %}"
    "{%- endfor %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (ByteLevel's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    alphabet = [table[b] for b in range(256)]
    assert sorted(alphabet) == sorted(_pre_tokenizers.ByteLevel.alphabet())
    return alphabet


def _train_bpe(words: collections.Counter) -> list[tuple[str, str]]:
    """Greedy BPE over `words` (tuples of symbols) until each is one symbol. The most
    frequent pair wins and ties go to the smallest pair, so the merges are reproducible.
    Pair counts are updated only for the words a merge touches (a lazy max-heap)."""
    entries = [list(word) for word in sorted(words)]
    counts = [words[word] for word in sorted(words)]
    pair_counts: collections.Counter = collections.Counter()
    where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    for i, symbols in enumerate(entries):
        for pair in zip(symbols, symbols[1:], strict=False):
            pair_counts[pair] += counts[i]
            where[pair].add(i)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    merges = []
    while heap:
        negative, best = heapq.heappop(heap)
        if pair_counts.get(best, 0) != -negative or negative == 0:
            continue  # a stale entry: the pair's count changed after it was pushed
        merges.append(best)
        changed = set()
        for i in sorted(where.pop(best)):
            symbols = entries[i]
            for pair in zip(symbols, symbols[1:], strict=False):
                pair_counts[pair] -= counts[i]
                changed.add(pair)
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    merged.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            entries[i] = merged
            for pair in zip(merged, merged[1:], strict=False):
                pair_counts[pair] += counts[i]
                where[pair].add(i)
                changed.add(pair)
        for pair in changed:
            if pair_counts[pair] > 0:
                heapq.heappush(heap, (-pair_counts[pair], pair))
            else:
                pair_counts.pop(pair, None)
                where.pop(pair, None)
    return merges


def _corpus_words(backend) -> collections.Counter:
    """The corpus split the way `backend` (a tokenizers.Tokenizer) splits text."""
    text = CORPUS
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    return collections.Counter(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text))


def _bpe_vocab(alphabet: list[str], merges: list[tuple[str, str]], first: tuple[str, ...] = ()) -> dict[str, int]:
    tokens = list(dict.fromkeys([*first, *alphabet, *(a + b for a, b in merges)]))
    return {token: i for i, token in enumerate(tokens)}


def _add_specials(tokenizer, tokens) -> None:
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in tokens], special_tokens=True)


@functools.cache
def _byte_level_bpe(proto_class: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a byte-level BPE trained with `proto_class`'s own pre-tokenizer."""
    import transformers

    backend = getattr(transformers, proto_class)().backend_tokenizer
    merges = _train_bpe(collections.Counter({tuple(w): c for w, c in _corpus_words(backend).items()}))
    return _bpe_vocab(_byte_alphabet(), merges), merges


def qwen2_tokenizer():
    """Qwen2Tokenizer (byte-level BPE) with Qwen2.5-VL's special tokens after the vocab."""
    from transformers import Qwen2Tokenizer

    vocab, merges = _byte_level_bpe("Qwen2Tokenizer")
    tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=131072)
    _add_specials(tokenizer, QWEN2_SPECIAL_TOKENS)
    return tokenizer


def mistral_tokenizer():
    """A byte-level BPE (tekken-like) tokenizer with Mistral's control tokens first and a
    reduced Mistral Small 3.1 chat template. Saved as a plain tokenizers backend, as the
    transformers loader would otherwise rebuild it with another pre-tokenizer."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    vocab, merges = _byte_level_bpe("Qwen2Tokenizer")
    backend = Tokenizer(models.BPE(vocab=_bpe_vocab(list(vocab), [], MISTRAL_SPECIAL_TOKENS), merges=list(merges)))
    backend.pre_tokenizer = Qwen2Tokenizer().backend_tokenizer.pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in MISTRAL_SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=MISTRAL_CHAT_TEMPLATE,
        model_max_length=131072,
    )


@functools.cache
def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from transformers import CLIPTokenizer

    backend = CLIPTokenizer().backend_tokenizer
    words = collections.Counter({(*w[:-1], w[-1] + "</w>"): c for w, c in _corpus_words(backend).items()})
    merges = _train_bpe(words)
    alphabet = _byte_alphabet()
    # As the real vocab: bytes, bytes ending a word, merges, then the two specials last
    # (CLIPTextModel finds the end of text by argmax over ids when eos_token_id is 2).
    vocab = _bpe_vocab([*alphabet, *(a + "</w>" for a in alphabet)], merges)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab, merges


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=77)


@functools.cache
def _llama_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Regex, pre_tokenizers

    # Llama-3's split (punctuation and digits apart from words, a lone space before a
    # digit), with spaces spelled "▁" as the Llama class's Metaspace does. The class then
    # encodes the whole text as one piece, and merges never cross these boundaries because
    # training never saw such a pair: HunyuanVideo's template prefix comes out at 95 tokens,
    # its `crop_start`, as with the real tokenizer.
    splitter = pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated")
    pieces = (piece.replace(" ", "▁") for piece, _ in splitter.pre_tokenize_str(CORPUS))
    words = collections.Counter(tuple(piece) for piece in pieces)
    merges = _train_bpe(words)
    alphabet = sorted({symbol for word in words for symbol in word})
    byte_tokens = tuple(f"<0x{b:02X}>" for b in range(256))
    return _bpe_vocab(alphabet, merges, ("<unk>", "<s>", "</s>", *byte_tokens)), merges


def llama_tokenizer():
    """LlamaTokenizer (▁-BPE with byte fallback) carrying Llama-3's header tokens, which
    HunyuanVideo's prompt template uses. Right padding: the pipeline crops the template
    from the front of the sequence."""
    from transformers import LlamaTokenizer

    vocab, merges = _llama_bpe()
    tokenizer = LlamaTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<pad>",
        add_bos_token=True,
        padding_side="right",
        model_max_length=8192,
    )
    _add_specials(tokenizer, LLAMA3_SPECIAL_TOKENS)
    tokenizer.update_post_processor()
    return tokenizer


@functools.cache
def _unigram_pieces() -> tuple[tuple[str, float], ...]:
    """Whole corpus words (with and without the leading "▁") outscore any split into
    characters, so the Unigram model keeps them whole."""
    words = sorted(set(" ".join(CORPUS.split()).replace(",", " ").replace(".", " ").split()))
    chars = sorted(
        {c for c in CORPUS if not c.isspace()} | set(string.ascii_letters + string.digits + string.punctuation)
    )
    pieces = {"▁": -2.0}
    for word in words:
        pieces["▁" + word] = -5.0
        pieces.setdefault(word, -6.0)
    for char in chars:
        pieces.setdefault("▁" + char, -9.0)
        pieces.setdefault(char, -10.0)
    return (("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *sorted(pieces.items()))


def t5_tokenizer():
    """T5TokenizerFast over a hand-made Unigram vocab (<pad>=0, </s>=1, <unk>=2 as in T5 and
    UMT5); appends </s> like the real one."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=list(_unigram_pieces()), extra_ids=0, model_max_length=512)
