"""LlamaFactory data formats through the base's own chat template: loss on assistant tokens
only, cutoff, dataset_info.json, malformed records named by index, and the one renderer giving
exactly what apply_chat_template gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from deploykit.core.errors import InputError
from deploykit.demo.models import prompt_ids
from deploykit.model.chat_template import render_tokenizer
from deploykit.train import data

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"name": "weather", "description": "Weather of a city", "parameters": CITY}]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tokenizer(request, demo_dirs):
    return AutoTokenizer.from_pretrained(demo_dirs[request.param] / "base")


def load(tokenizer, tmp_path: Path, records, name="d.json", cutoff=4096, **kw):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, ensure_ascii=False))
    fmt = kw.pop("formatting", "auto")
    return data.load(tokenizer, [str(path)], None, str(tmp_path), fmt, cutoff, **kw)


def trained_text(tokenizer, ex) -> str:
    return tokenizer.decode(
        [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != -100]
    )


def full_ids(tokenizer, messages, tools=None) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_alpaca_with_system_and_history(tokenizer, tmp_path):
    rec = {"instruction": "Add", "input": "2 3", "output": "5", "system": "Be exact.",
           "history": [["Hi", "Hello!"]]}  # fmt: skip
    (ex,), counts = load(tokenizer, tmp_path, [rec])
    messages = [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Add\n2 3"},
        {"role": "assistant", "content": "5"},
    ]
    assert ex.input_ids == full_ids(tokenizer, messages)  # the model's own template, whole
    eot = "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else "<|eot_id|>"
    learned = trained_text(tokenizer, ex)
    assert learned.replace("\n", "") == f"Hello!{eot}5{eot}"  # both answers, nothing else
    assert counts == {"records": 1, "skipped": 0, "tokens": len(ex.input_ids)}


def test_sharegpt_with_tools_function_call_and_observation(tokenizer, tmp_path):
    rec = {
        "conversations": [
            {"from": "human", "value": "Weather in Paris?"},
            {"from": "function_call", "value": json.dumps({"name": "weather",
                                                           "arguments": {"city": "Paris"}})},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "It is sunny."},
        ],
        "system": "You help.",
        "tools": json.dumps(TOOLS),
    }  # fmt: skip
    (ex,), _ = load(tokenizer, tmp_path, [rec], name="d.jsonl")
    learned = trained_text(tokenizer, ex)
    assert "It is sunny." in learned and '"city": "Paris"' in learned  # the call is learned
    assert "Weather in Paris?" not in learned and "sunny." not in learned.replace("is sunny.", "")
    rendered = tokenizer.decode(ex.input_ids)
    assert '"name": "weather"' in rendered and "Weather of a city" in rendered  # tools shown


def test_openai_messages_and_dataset_info_columns_and_tags(tokenizer, tmp_path):
    dialogs = [[("me", "Q1"), ("bot", "A1")], [("me", "Q2"), ("bot", "A2")]]
    (tmp_path / "chat.jsonl").write_text(
        "".join(
            json.dumps({"dialog": [{"speaker": s, "text": t} for s, t in d]}) + "\n"
            for d in dialogs
        )
    )
    (tmp_path / "inst.json").write_text(json.dumps([{"q": "Name it", "a": "Blue"}]))
    (tmp_path / "oa.json").write_text(json.dumps([{"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "Q3"},
        {"role": "assistant", "content": "A3"}]}]))  # fmt: skip
    info = {
        "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt",
                 "columns": {"messages": "dialog"},
                 "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me",
                          "assistant_tag": "bot"}},
        "inst": {"file_name": "inst.json", "columns": {"prompt": "q", "response": "a"}},
        "oa": {"file_name": "oa.json", "formatting": "openai"},
    }  # fmt: skip
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    examples, counts = data.load(tokenizer, [], "chat, inst,oa", str(tmp_path), "auto", 4096)
    assert counts["records"] == 4
    learned = [trained_text(tokenizer, e) for e in examples]
    for answer, text in zip(["A1", "A2", "Blue", "A3"], learned, strict=True):
        assert text.startswith(answer)
    assert "Name it" in tokenizer.decode(examples[2].input_ids)
    with pytest.raises(InputError, match="'nope' is not in .*dataset_info.json") as err:
        data.load(tokenizer, [], "nope", str(tmp_path), "auto", 4096)
    assert err.value.hint == "known: chat, inst, oa"


def test_cutoff_truncates_and_skips_records_with_nothing_left_to_learn(tokenizer, tmp_path):
    recs = [{"instruction": "x " * 200, "output": "late"}, {"instruction": "Hi", "output": "Yo"}]
    examples, counts = load(tokenizer, tmp_path, recs, cutoff=64)
    assert counts["skipped"] == 1 and len(examples) == 1
    assert len(examples[0].input_ids) <= 64
    short, _ = load(tokenizer, tmp_path, [{"instruction": "Hi", "output": "a b c d e f g h"}],
                    cutoff=len(examples[0].input_ids) + 2)  # fmt: skip
    assert len(short[0].input_ids) == len(examples[0].input_ids) + 2
    with pytest.raises(InputError, match="none of the 1 records .* --cutoff-len 8"):
        load(tokenizer, tmp_path, recs[:1], cutoff=8)


BAD = [
    ({"instruction": "Hi"}, "record 1: output must be a string, got missing"),
    ({"instruction": "Hi", "output": 5}, "record 1: output must be a string, got int"),
    ({"instruction": "Hi", "output": "x", "history": [["only one"]]}, r"history\[0\] must be"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}]},
     r"record 1: conversations\[1\]: unknown from 'bot'"),
    ({"conversations": [{"from": "human", "value": "Hi"}]}, "has no 'gpt' turn to learn from"),
    ({"conversations": [{"from": "human", "value": "Hi"},
                        {"from": "function_call", "value": "{not json"}]},
     r"conversations\[1\] is not a JSON function call"),
    ("just a string", "record 1: must be a JSON object, got str"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "message"), BAD)
def test_malformed_record_names_its_index_and_the_problem(tokenizer, tmp_path, bad, message):
    good = (
        {"instruction": "Hi", "output": "Yo"}
        if "conversations" not in str(bad)
        else {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    )
    with pytest.raises(InputError, match=message):
        load(tokenizer, tmp_path, [good, bad], formatting="auto")


def test_jsonl_syntax_error_names_record_and_line(tokenizer, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": \n')
    with pytest.raises(InputError, match=r"record 1 \(line 3\) is not valid JSON"):
        data.load(tokenizer, [str(path)], None, str(tmp_path), "auto", 64)


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<b>&'x'</b>"},
     {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "再见 👋"}],
    [{"role": "user", "content": "Weather in Paris?"},
     {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
         "name": "weather", "arguments": {"city": "Paris"}}}]},
     {"role": "tool", "content": "sunny"}],
]  # fmt: skip


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("generation", [True, False])
def test_one_renderer_gives_what_apply_chat_template_gives(tokenizer, messages, generation):
    tools = [{"type": "function", "function": t} for t in TOOLS] if len(messages) == 3 else None
    want = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=generation
    )
    got = render_tokenizer(tokenizer, messages, tools=tools, add_generation_prompt=generation)
    assert got == want
    # the demo's prompt ids (the demo adapter was trained on them) did not change either
    if len(messages) == 1 and generation:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        assert prompt_ids(tokenizer, "Hi") == list(ids)


def test_a_conversation_opening_with_the_answer_cannot_be_rendered(tokenizer, tmp_path):
    rec = {"conversations": [{"from": "gpt", "value": "I speak first"}]}
    with pytest.raises(InputError, match="record 0: the chat template cannot render it"):
        load(tokenizer, tmp_path, [rec])
