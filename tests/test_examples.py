"""Every example runs in-process against a real stack, in both modes, at small sizes."""

from __future__ import annotations

from typing import Any

import pytest

from examples import chain_summarization, langchain_lcel, map_reduce_summarization, multi_agent

SMALL = {
    chain_summarization: ["--chunks", "3", "--chunk-words", "60", "--output-tokens", "8"],
    map_reduce_summarization: ["--chunks", "4", "--chunk-words", "60", "--output-tokens", "8"],
    multi_agent: ["--files", "2", "--rounds", "1", "--output-tokens", "8", "--task-words", "40"],
    langchain_lcel: ["--sections", "2", "--output-tokens", "8"],
}


@pytest.mark.parametrize("example", list(SMALL), ids=lambda m: m.__name__.split(".")[-1])
def test_example_gateway_and_client_side_agree(example: Any, stack: Any, capsys: Any) -> None:
    argv = ["--base-url", stack.url + "/v1", *SMALL[example]]
    gw = example.main(argv)
    cs = example.main([*argv, "--client-side"])
    assert gw["mode"] == "gateway" and cs["mode"] == "client-side"
    assert gw["seconds"] > 0 and cs["seconds"] > 0
    assert gw["result"] and gw["requests"] == cs["requests"]
    # the simulated engine is deterministic in the prompt: same prompts, same answers,
    # so server-side substitution produced exactly the prompts the client built itself
    assert gw["result"] == cs["result"]
    printed = capsys.readouterr().out
    assert "[gateway]" in printed and "[client-side]" in printed and "end-to-end" in printed
