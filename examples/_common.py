"""Shared bits of the examples: flags, a synthetic document, timing, a plain client."""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import openai

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"

_WORDS = (
    "the model cache engine request token prefix batch latency graph variable session "
    "summary chunk reduce map agent design review file queue scheduler gateway radix tree "
    "memory decode prefill throughput priority stage fan out barrier pipeline result data "
    "user service network client server document paragraph section evidence claim method"
).split()


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="gateway URL ending in /v1")
    p.add_argument("--api-key", default="EMPTY")
    p.add_argument("--model", default=None, help="default: the first model the gateway lists")
    p.add_argument(
        "--client-side",
        action="store_true",
        help="orchestrate on the client (each step waits for its inputs) for comparison",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="document seed, also sent as the sampling seed"
    )
    return p


def document(chunks: int, words_per_chunk: int, seed: int = 0) -> list[str]:
    """A deterministic synthetic document, already split into chunks."""
    rng = random.Random(seed)
    out = []
    for i in range(chunks):
        words = [rng.choice(_WORDS) for _ in range(words_per_chunk)]
        out.append(f"[part {i + 1}] " + " ".join(words) + ".")
    return out


def fill(template: str, **values: str) -> str:
    """Client-side rendering of a template (the baseline sends finished prompts)."""
    for k, v in values.items():
        template = template.replace("{{" + k + "}}", v)
    return template


@dataclass
class Outcome:
    """What an example's ``main`` returns (and prints)."""

    mode: str
    seconds: float
    result: Any
    requests: int
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def timed(mode: str, requests: int, run: Callable[[], Any]) -> Outcome:
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    print(f"[{mode}] {requests} LLM requests, end-to-end {seconds:.3f} s")
    return Outcome(mode, seconds, result, requests)


class PlainClient:
    """The client-side baseline: plain OpenAI calls, no session headers."""

    def __init__(self, base_url: str, api_key: str, model: str | None, seed: int = 0) -> None:
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key)
        self.seed = seed
        self.model = model or self.client.models.list().data[0].id

    def complete(self, prompt: str, max_tokens: int) -> str:
        r = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            seed=self.seed,
        )
        return r.choices[0].message.content or ""


def preview(text: str, n: int = 100) -> str:
    return text if len(text) <= n else text[:n] + "..."


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    return p.parse_args(list(argv) if argv is not None else None)
