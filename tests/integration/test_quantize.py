"""`deploykit quantize`: several types from one input, types checked against llama-quantize's
own list, imatrix-requiring types refused early or fed from --calibration, no partial output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploykit.core.errors import InputError
from deploykit.gguf import quantize
from deploykit.llamacpp import gguf_header as gguf_meta
from tests.support.cli import invoke, one_error_line, run_cli

#: Tools whose keys are not in sorted order and whose text needs escaping in HTML: rendered
#: as the model sees them, tojson keeps the order and writes <, & and ' as they are.
CALIBRATION_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Find <tags> & 'quoted' text",
            "parameters": {
                "type": "object",
                "required": ["query"],
                "properties": {
                    "query": {"type": "string", "description": "what to find, e.g. <b>"},
                    "limit": {"type": "integer"},
                },
            },
        },
    }
]
CALIBRATION_ROWS = [
    {
        "messages": [
            {"role": "system", "content": "Be <brief> & 'exact'."},
            {"role": "user", "content": "Is 1 < 2 & 'yes'?"},
            {"role": "assistant", "content": "Yes: 1 < 2 & it's true."},
        ]
    },
    {
        "tools": CALIBRATION_TOOLS,
        "messages": [
            {"role": "user", "content": "Find <tags> & 'quotes'."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "type": "function",
                        "function": {
                            "name": "lookup",
                            "arguments": {"query": "<b> & 'x'", "limit": 3},
                        },
                    }
                ],
            },
            {"role": "tool", "content": '{"hits": 0, "note": "<none> & it\'s done"}'},
            {"role": "assistant", "content": "Nothing found <sorry> & that's it."},
        ],
    },
]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_several_types_from_one_input(arch, quants, f16):  # noqa: F811
    for qtype, path in quants[arch].items():
        info = gguf_meta.read(path)
        assert info.file_type == qtype
        assert info.get("tokenizer.chat_template")  # metadata carried over
        assert path.stat().st_size < f16[arch].stat().st_size
    # k-quants applied as is: every row is a multiple of 256 in the demo models
    assert "Q4_K" in gguf_meta.read(quants[arch]["Q4_K_M"]).tensor_types()
    assert not [p for p in f16[arch].parent.iterdir() if ".partial" in p.name]


def test_type_names_and_list():
    types = quantize.parse_types("q4_k_m, Q8_0,iq4_xs,q4_k_m")
    assert types == ["Q4_K_M", "Q8_0", "IQ4_XS"]
    proc = run_cli("quantize", "--list-types", "--json")
    assert proc.returncode == 0
    assert {"Q4_K_M", "Q6_K", "IQ2_XXS", "BF16"} <= set(json.loads(proc.stdout)["types"])
    assert quantize.base_name(Path("x/my-model-F16.gguf")) == "my-model"
    assert quantize.base_name(Path("model.bf16.gguf")) == "model"


def test_unknown_type_is_one_error_line(f16, tmp_path):  # noqa: F811
    line = one_error_line(
        invoke("quantize", str(f16["qwen2"]), "--quant", "q4_k_x", "--out-dir", str(tmp_path)), 3
    )
    assert "unknown quantization type 'q4_k_x'" in line and "Q4_K_M" in line
    assert list(tmp_path.iterdir()) == []


def test_non_gguf_input(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf at all")
    line = one_error_line(invoke("quantize", str(fake), "--quant", "q4_k_m"), 3)
    assert "is not a GGUF file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_already_quantized_input_and_unwritable_output(quants, f16, tmp_path):  # noqa: F811
    line = one_error_line(
        run_cli(
            "quantize",
            str(quants["qwen2"]["Q8_0"]),
            "--quant",
            "q4_k_m",
            "--out-dir",
            str(tmp_path),
        ),
        3,
    )
    assert "already quantized (Q8_0)" in line
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(
        run_cli("quantize", str(f16["qwen2"]), "--quant", "q8_0", "--out-dir", str(blocker / "d")),
        3,
    )
    assert "cannot create the output folder" in line


def test_imatrix_type_without_imatrix_fails_before_work(f16, tmp_path):  # noqa: F811
    line = one_error_line(
        run_cli(
            "quantize", str(f16["qwen2"]), "--quant", "q4_k_m,iq2_xxs", "--out-dir", str(tmp_path)
        ),
        6,
    )
    assert "IQ2_XXS needs an importance matrix" in line and "--calibration" in line
    assert list(tmp_path.iterdir()) == []  # not even the Q4_K_M that needs none


def test_imatrix_type_with_chat_calibration(f16, demo_dirs, tmp_path):  # noqa: F811
    probes = json.loads((demo_dirs["qwen2"] / "probes.json").read_text())["probes"]
    calib = tmp_path / "chats.jsonl"
    rows = [
        {"messages": [*p["messages"], {"role": "assistant", "content": p["answer"]}]}
        for p in probes
    ]
    calib.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows * 4) + "\n")
    out_dir = tmp_path / "q"
    proc = run_cli(
        "quantize",
        str(f16["qwen2"]),
        "--quant",
        "IQ2_XXS",
        "--out-dir",
        str(out_dir),
        "--calibration",
        str(calib),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["imatrix_computed"]["chat_rendered"] is True
    out = out_dir / "qwen2-IQ2_XXS.gguf"
    info = gguf_meta.read(out)
    assert info.file_type == "IQ2_XXS" and "IQ2_XXS" in info.tensor_types()
    assert info.get("quantize.imatrix.file")
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "qwen2-IQ2_XXS.gguf",
        "qwen2-imatrix.gguf",
    ]


def test_calibration_text_rendering(f16, tmp_path):  # noqa: F811
    text = tmp_path / "c.txt"
    text.write_text("plain text")
    assert quantize.calibration_text(f16["qwen2"], text) == ("plain text", False)
    chat = tmp_path / "c.jsonl"
    chat.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    rendered, special = quantize.calibration_text(f16["qwen2"], chat)
    assert special and "<|im_start|>user\nhi<|im_end|>" in rendered
    chat.write_text('{"nope": 1}\n')
    with pytest.raises(InputError, match="not a chat example"):
        quantize.calibration_text(f16["qwen2"], chat)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])  # Qwen2.5's template and Llama 3.1's
def test_chat_calibration_renders_as_apply_chat_template(arch, f16, merged, tmp_path):
    """--calibration chat JSONL is the text the model saw in training: the GGUF's template
    rendered exactly as transformers' apply_chat_template (key order kept, nothing escaped)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged[arch])
    chat = tmp_path / "chats.jsonl"
    chat.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in CALIBRATION_ROWS) + "\n")
    rendered, special = quantize.calibration_text(f16[arch], chat)
    expected = "".join(
        tok.apply_chat_template(
            r["messages"], tools=r.get("tools"), tokenize=False, add_generation_prompt=False
        )
        for r in CALIBRATION_ROWS
    )
    assert special and rendered == expected
    assert rendered.index('"name": "lookup"') < rendered.index('"description": "Find')  # order
    assert "<tags> & 'quoted'" in rendered and "\\u003c" not in rendered  # not escaped
