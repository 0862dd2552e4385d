"""Multi-agent software team (MetaGPT-like): an architect, then rounds of programmers,
reviewers and revisers, one branch per source file, each round seeing the design and
all current files (a long shared prefix) and feeding its outputs to the next round.

    python examples/multi_agent.py --base-url http://127.0.0.1:8000/v1
    python examples/multi_agent.py --client-side

With the gateway every round of the whole DAG is submitted up front; files,
reviews and the design stay on the server and only the final files are read.
``--client-side`` runs each round's branches in parallel threads and waits
for the round (a barrier) before building the next round's prompts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compat import Session, Variable, semantic_function
from examples._common import Outcome, PlainClient, document, fill, parse, parser, preview, timed

ARCHITECT = (
    "You are the architect of a software team. Task:\n{{task}}\n\n"
    "Write the design: modules, interfaces and one paragraph per file."
)
PROGRAM = (
    "Design:\n{{design}}\n\nYou are a programmer. Write the source of {{file}} "
    "following the design."
)
REVIEW = (
    "Design:\n{{design}}\n\nCurrent source files:\n{{files}}\n\n"
    "You are a reviewer. Review {{file}} against the design and the other files."
)
REVISE = (
    "Design:\n{{design}}\n\nCurrent source files:\n{{files}}\n\nReview of {{file}}:\n{{review}}\n\n"
    "You are the programmer of {{file}}. Write its revised source."
)



def file_names(n: int) -> list[str]:
    return [f"module_{i}.py" for i in range(n)]


def run_gateway(
    s: Session, task: str, files: int, rounds: int, tokens: int, seed: int = 0
) -> list[str]:
    @semantic_function(ARCHITECT, max_tokens=tokens, seed=seed)
    def architect(task): ...  # type: ignore[no-untyped-def]

    @semantic_function(PROGRAM, max_tokens=tokens, seed=seed)
    def program(design, file): ...  # type: ignore[no-untyped-def]

    @semantic_function(REVIEW, max_tokens=tokens, seed=seed)
    def review(design, files, file): ...  # type: ignore[no-untyped-def]

    @semantic_function(REVISE, max_tokens=tokens, seed=seed)
    def revise(design, files, review, file): ...  # type: ignore[no-untyped-def]

    names = file_names(files)
    design = architect(task=task, session=s)
    sources: list[Variable] = [program(design=design, file=f, session=s) for f in names]
    for _ in range(rounds):
        reviews = [review(design=design, files=sources, file=f, session=s) for f in names]
        sources = [
            revise(design=design, files=sources, review=r, file=f, session=s)
            for f, r in zip(names, reviews)
        ]
    return [v.get() for v in sources]


def run_client_side(c: PlainClient, task: str, files: int, rounds: int, tokens: int) -> list[str]:
    names = file_names(files)
    with ThreadPoolExecutor(max_workers=min(32, files)) as pool:

        def each(make: Callable[[int], str]) -> list[str]:  # one barrier-synchronised round
            return list(pool.map(lambda i: c.complete(make(i), tokens), range(files)))

        design = c.complete(fill(ARCHITECT, task=task), tokens)
        sources = each(lambda i: fill(PROGRAM, design=design, file=names[i]))
        for _ in range(rounds):
            listing = "\n".join(sources)
            reviews = each(
                lambda i, listing=listing: fill(REVIEW, design=design, files=listing, file=names[i])
            )
            sources = each(
                lambda i, listing=listing, reviews=reviews: fill(
                    REVISE, design=design, files=listing, review=reviews[i], file=names[i]
                )
            )
    return sources


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=4, help="branches per round (paper: 4-16)")
    p.add_argument("--rounds", type=int, default=4, help="review+revise rounds after the first")
    p.add_argument("--output-tokens", type=int, default=200)
    p.add_argument("--task-words", type=int, default=300)
    a = parse(p, argv)
    task = document(1, a.task_words, a.seed)[0]
    n = 1 + a.files + 2 * a.files * a.rounds
    args = (task, a.files, a.rounds, a.output_tokens)
    out: Outcome
    if a.client_side:
        c = PlainClient(a.base_url, a.api_key, a.model, a.seed)
        out = timed("client-side", n, lambda: run_client_side(c, *args))
    else:
        with Session(base_url=a.base_url, api_key=a.api_key, default_model=a.model) as s:
            s.model()
            out = timed("gateway", n, lambda: run_gateway(s, *args, seed=a.seed))
            s.close()
    for name, src in zip(file_names(a.files), out.result):
        print(f"{name}: {preview(src, 60)}")
    return out.as_dict()


if __name__ == "__main__":
    main()
