"""compat.langchain with the real langchain-openai against a real stack."""

from __future__ import annotations

from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from compat import AsyncSession, Session, Variable
from compat.langchain import parrot_chat, parrot_get, parrot_submit, template_inputs

MODEL = "sim-llama-3-8b"
PROMPT = ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "About {x}")])


def test_chat_openai_with_session_headers(stack: Any) -> None:
    s = Session(base_url=stack.url + "/v1", default_model=MODEL)
    llm = parrot_chat(s, output="first", criteria="throughput", max_tokens=6)
    assert llm.default_headers == {
        "X-Parrot-Session": s.id, "X-Parrot-Output": "first", "X-Parrot-Criteria": "throughput",
    }  # fmt: skip
    text = (PROMPT | llm | StrOutputParser()).invoke({"x": "tries"})
    assert text and s.get("first", wait=0) == text
    pending = parrot_chat(s, output="second", async_=True, max_tokens=6)
    assert pending.invoke("Echo {{first}}").content == ""  # answered at once
    assert s.get("second", wait=30)


def test_submit_runnable_and_template_inputs(stack: Any) -> None:
    s = Session(base_url=stack.url + "/v1", default_model=MODEL)
    topic = s.set("topic", "radix trees")
    inputs = template_inputs({"x": topic, "y": "literal {{braces}}", "n": 3})
    assert inputs == {"x": "{{topic}}", "y": "literal \\{{braces}}", "n": 3}
    chain = PROMPT | parrot_submit(s, output="about", max_tokens=6)
    a, b = chain.batch([template_inputs({"x": topic}), template_inputs({"x": "a {{literal}}"})])
    assert isinstance(a, Variable) and a.name != b.name and a.name.startswith("about_")
    assert (parrot_get(timeout=30)).invoke(a) == a.get() and b.get(timeout=30)


async def test_async_submit_runnable(stack: Any) -> None:
    async with AsyncSession(base_url=stack.url + "/v1", default_model=MODEL) as s:
        v = await (PROMPT | parrot_submit(s, max_tokens=6)).ainvoke({"x": "async"})
        assert await v.aget(timeout=30)
        llm = parrot_chat(s, max_tokens=6)
        text = await llm.ainvoke("Echo {{%s}}" % v.name)
        assert text.content
