"""LangChain (LCEL) over the gateway: an outline, sections written in parallel, and an
introduction that needs all sections — values stay on the server until the end.

    python examples/langchain_lcel.py --base-url http://127.0.0.1:8000/v1
    python examples/langchain_lcel.py --client-side   # same chains, values through the client

Gateway mode: ``prompt | parrot_submit(s)`` returns Variables at once (``.batch``
fans out); the last chain is an ordinary ``prompt | ChatOpenAI | StrOutputParser``
whose prompt names the sections by placeholder; the gateway holds it until
they are ready. Client-side mode: ``prompt | ChatOpenAI | StrOutputParser``
at every step, each waiting for the previous text.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from compat import Session
from compat.langchain import parrot_chat, parrot_submit, template_inputs
from examples._common import Outcome, PlainClient, parse, parser, preview, timed

OUTLINE = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a technical writer."),
        ("user", "Write a {n}-point outline about {topic}."),
    ]
)
SECTION = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a technical writer."),
        ("user", "Outline:\n{outline}\n\nWrite section {i} of the article."),
    ]
)
INTRO = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a technical writer."),
        ("user", "Sections:\n{sections}\n\nWrite the introduction of the article."),
    ]
)


def run_gateway(s: Session, topic: str, n: int, tokens: int, seed: int = 0) -> str:
    submit = parrot_submit(s, max_tokens=tokens, seed=seed)
    outline = (OUTLINE | submit).invoke(template_inputs({"topic": topic, "n": n}))
    sections = (SECTION | submit).batch(
        [template_inputs({"outline": outline, "i": i + 1}) for i in range(n)]
    )
    intro = INTRO | parrot_chat(s, max_tokens=tokens, seed=seed) | StrOutputParser()
    return intro.invoke(template_inputs({"sections": sections}))


def run_client_side(llm: ChatOpenAI, topic: str, n: int) -> str:
    text = StrOutputParser()
    outline = (OUTLINE | llm | text).invoke({"topic": topic, "n": n})
    sections = (SECTION | llm | text).batch([{"outline": outline, "i": i + 1} for i in range(n)])
    return (INTRO | llm | text).invoke({"sections": "\n".join(sections)})


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--topic", default="prefix sharing in LLM serving")
    p.add_argument("--sections", type=int, default=4)
    p.add_argument("--output-tokens", type=int, default=100)
    a = parse(p, argv)
    n = a.sections + 2
    out: Outcome
    if a.client_side:
        model = PlainClient(a.base_url, a.api_key, a.model).model
        llm = ChatOpenAI(
            model=model,
            base_url=a.base_url,
            api_key=a.api_key,
            max_tokens=a.output_tokens,
            seed=a.seed,
        )
        out = timed("client-side", n, lambda: run_client_side(llm, a.topic, a.sections))
    else:
        with Session(base_url=a.base_url, api_key=a.api_key, default_model=a.model) as s:
            s.model()
            out = timed(
                "gateway", n, lambda: run_gateway(s, a.topic, a.sections, a.output_tokens, a.seed)
            )
            s.close()
    print("introduction:", preview(out.result))
    return out.as_dict()


if __name__ == "__main__":
    main()
