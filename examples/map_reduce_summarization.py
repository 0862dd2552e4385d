"""Map-reduce summarization: summarize every chunk at once, then one summary of summaries.

    python examples/map_reduce_summarization.py --base-url http://127.0.0.1:8000/v1
    python examples/map_reduce_summarization.py --client-side

With the gateway the map requests and the reduce are submitted together; the
reduce's prompt names every map output by placeholder, so it starts on the
server the moment the last map finishes and no map output reaches the client.
``--client-side`` runs the maps in parallel threads, collects their text, and
then sends the reduce.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compat import Session, semantic_function
from examples._common import Outcome, PlainClient, document, fill, parse, parser, preview, timed

MAP = "Summarize this part of a document in two sentences.\n\n{{chunk}}\n\nSummary:"
REDUCE = (
    "Here are summaries of the parts of a document, in order:\n{{summaries}}\n\n"
    "Write one summary of the whole document.\n\nSummary:"
)


def run_gateway(s: Session, chunks: list[str], output_tokens: int, seed: int = 0) -> str:
    @semantic_function(MAP, max_tokens=output_tokens, seed=seed)
    def summarize(chunk): ...  # type: ignore[no-untyped-def]

    @semantic_function(REDUCE, max_tokens=output_tokens, seed=seed)
    def combine(summaries): ...  # type: ignore[no-untyped-def]

    parts = [summarize(chunk=c, session=s) for c in chunks]
    return combine(summaries=parts, session=s).get()


def run_client_side(c: PlainClient, chunks: list[str], output_tokens: int) -> str:
    with ThreadPoolExecutor(max_workers=min(32, len(chunks))) as pool:
        parts = list(pool.map(lambda ch: c.complete(fill(MAP, chunk=ch), output_tokens), chunks))
    return c.complete(fill(REDUCE, summaries="\n".join(parts)), output_tokens)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=15)
    p.add_argument("--chunk-words", type=int, default=1000)
    p.add_argument("--output-tokens", type=int, default=50)
    a = parse(p, argv)
    chunks = document(a.chunks, a.chunk_words, a.seed)
    n = a.chunks + 1
    out: Outcome
    if a.client_side:
        c = PlainClient(a.base_url, a.api_key, a.model, a.seed)
        out = timed("client-side", n, lambda: run_client_side(c, chunks, a.output_tokens))
    else:
        with Session(base_url=a.base_url, api_key=a.api_key, default_model=a.model) as s:
            s.model()
            out = timed("gateway", n, lambda: run_gateway(s, chunks, a.output_tokens, a.seed))
            s.close()
    print("final summary:", preview(out.result))
    return out.as_dict()


if __name__ == "__main__":
    main()
