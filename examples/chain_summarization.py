"""Chain summarization: step k refines the running summary with chunk k.

    python examples/chain_summarization.py --base-url http://127.0.0.1:8000/v1
    python examples/chain_summarization.py --client-side   # the same app, client-orchestrated

With the gateway the whole chain is submitted at once as semantic variables:
each summary stays on the server and feeds the next step without a client
round trip; only the final summary is read. ``--client-side`` waits for each
summary and sends it back in the next prompt (plain OpenAI calls).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compat import Session, semantic_function
from examples._common import Outcome, PlainClient, document, fill, parse, parser, preview, timed

FIRST = "Summarize this part of a document in a few sentences.\n\n{{chunk}}\n\nSummary:"
REFINE = (
    "Here is the summary of a document so far:\n{{summary}}\n\n"
    "Refine it with the next part of the document:\n{{chunk}}\n\nRefined summary:"
)


def run_gateway(s: Session, chunks: list[str], output_tokens: int, seed: int = 0) -> str:
    @semantic_function(FIRST, max_tokens=output_tokens, seed=seed)
    def first(chunk): ...  # type: ignore[no-untyped-def]

    @semantic_function(REFINE, max_tokens=output_tokens, seed=seed)
    def refine(summary, chunk): ...  # type: ignore[no-untyped-def]

    summary = first(chunk=chunks[0], session=s)
    for chunk in chunks[1:]:
        summary = refine(summary=summary, chunk=chunk, session=s)
    return summary.get()


def run_client_side(c: PlainClient, chunks: list[str], output_tokens: int) -> str:
    summary = c.complete(fill(FIRST, chunk=chunks[0]), output_tokens)
    for chunk in chunks[1:]:
        summary = c.complete(fill(REFINE, summary=summary, chunk=chunk), output_tokens)
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--chunk-words", type=int, default=1000)
    p.add_argument("--output-tokens", type=int, default=50)
    a = parse(p, argv)
    chunks = document(a.chunks, a.chunk_words, a.seed)
    out: Outcome
    if a.client_side:
        c = PlainClient(a.base_url, a.api_key, a.model, a.seed)
        out = timed("client-side", a.chunks, lambda: run_client_side(c, chunks, a.output_tokens))
    else:
        with Session(base_url=a.base_url, api_key=a.api_key, default_model=a.model) as s:
            s.model()  # resolve the model before the clock starts
            out = timed(
                "gateway", a.chunks, lambda: run_gateway(s, chunks, a.output_tokens, a.seed)
            )
            s.close()
    print("final summary:", preview(out.result))
    return out.as_dict()


if __name__ == "__main__":
    main()
