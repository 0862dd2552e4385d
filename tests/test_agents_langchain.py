"""LangChain agents through the gateway: ``bind_tools``, ``with_structured_output`` (json_schema,
function calling, json mode), and the ``langchain-tests`` standard chat-model integration
suite with tool calling, tool choice and structured output on, all against one gateway
over simulated engines (started once for the module)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Optional

import httpx
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests
from pydantic import BaseModel, Field

from common.serving import UvicornThread
from gateway.redis_server import RedisServer
from gateway.testing import start_engine, start_gateway

pytestmark = pytest.mark.timeout(60)

MODEL, ALT_MODEL = "sim-llama-3-8b", "sim-llama-3-8b-alt"
_GATEWAY: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def gateway(redis_server: RedisServer) -> Iterator[str]:
    """One gateway over two engines serving different models (the suite overrides the model)."""
    engines: list[UvicornThread] = []
    gw = None
    try:
        for model in (MODEL, ALT_MODEL):
            engines.append(start_engine(0.005, eos_after=(4, 16), model=model))
        gw = start_gateway(redis_server.url, [e.url for e in engines])
        _GATEWAY["url"] = gw.url + "/v1"
        yield _GATEWAY["url"]
    finally:
        for t in [*([gw] if gw else []), *engines]:
            t.stop()


def llm(**kw: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=_GATEWAY["url"], api_key="unused", model=MODEL, max_retries=0, **kw)


@tool
def get_weather(city: str, unit: str = "celsius") -> str:
    """Get the weather in a city."""
    return f"22 degrees {unit} in {city}"


def test_bind_tools_agent_loop_invoke_and_stream() -> None:
    model = llm().bind_tools([get_weather])
    question = HumanMessage("What is the weather in 'Porto'?")
    call_msg = model.invoke([question])
    assert isinstance(call_msg, AIMessage) and len(call_msg.tool_calls) == 1
    call = call_msg.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"]["city"] == "Porto"
    streamed = None
    for chunk in model.stream([question]):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.tool_calls == call_msg.tool_calls  # same seed, same call
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage)
    answer = model.invoke([question, call_msg, result])
    assert isinstance(answer, AIMessage) and not answer.tool_calls and answer.content


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")
    rating: Optional[int] = Field(default=None, ge=1, le=10, description="how funny, 1 to 10")


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_with_structured_output(method: str) -> None:
    prompt = "Tell me a joke about cats, as JSON with 'setup' and 'punchline'."
    chat = llm().with_structured_output(Joke, method=method)  # type: ignore[arg-type]
    joke = chat.invoke(prompt)
    assert isinstance(joke, Joke) and joke.setup and joke.punchline
    chunks = list(chat.stream(prompt))
    assert chunks and isinstance(chunks[-1], Joke)
    raw = llm().with_structured_output(Joke, method=method, include_raw=True).invoke(prompt)  # type: ignore[arg-type]
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Joke)


class TestGatewayStandard(ChatModelIntegrationTests):
    """The standard suite, against ``ChatOpenAI`` pointed at the gateway.

    Capabilities left off, each skipped by the suite itself with its own message:
    image, PDF and audio inputs (the simulated engine is a text model, and those tests
    download their media from the internet, which tests here never reach); Anthropic-format
    inputs (not an OpenAI-API feature); VCR-recorded timing (``test_stream_time`` replays
    cassettes of a real provider)."""

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # A fresh async HTTP client per model: langchain-openai's shared default one is bound
        # to the event loop of the first async test, and pytest-asyncio gives each test its own.
        return {"base_url": _GATEWAY["url"], "api_key": "unused", "model": MODEL, "max_retries": 0,
                "stream_usage": True, "timeout": 30, "http_async_client": httpx.AsyncClient(timeout=30)}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return ALT_MODEL
