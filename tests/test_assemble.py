from gateway.assemble import Assembler


def test_chat_chunks_fold_into_a_completion() -> None:
    a = Assembler("chat")
    a.add({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m",
           "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    a.add({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"},
                                   "logprobs": {"content": [{"token": "Hel"}]}}]})
    a.add({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"},
                                   "logprobs": {"content": [{"token": "lo"}]}, "finish_reason": "stop"}]})
    a.add({"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    body = a.result()
    assert body["object"] == "chat.completion" and body["id"] == "c1" and body["model"] == "m"
    c = body["choices"][0]
    assert c["message"] == {"role": "assistant", "content": "Hello"}
    assert c["finish_reason"] == "stop"
    assert [t["token"] for t in c["logprobs"]["content"]] == ["Hel", "lo"]
    assert body["usage"]["completion_tokens"] == 2


def test_tool_calls_and_multiple_choices() -> None:
    a = Assembler("chat")
    a.add({"choices": [{"index": 1, "delta": {"tool_calls": [
        {"index": 0, "id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\""}}]}}]})
    a.add({"choices": [{"index": 1, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": "tool_calls"}]})
    a.add({"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length"}]})
    body = a.result()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    call = body["choices"][1]["message"]["tool_calls"][0]
    assert call == {"id": "t1", "type": "function", "function": {"name": "get", "arguments": "{\"a\": 1}"}}
    assert body["choices"][0]["message"]["content"] == "x"


def test_text_completion() -> None:
    a = Assembler("completion")
    a.add({"id": "t", "object": "text_completion", "choices": [{"index": 0, "text": "ab"}]})
    a.add({"id": "t", "choices": [{"index": 0, "text": "c", "finish_reason": "length"}]})
    body = a.result()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "abc" and body["choices"][0]["finish_reason"] == "length"
