"""The models ``deploykit eval`` can predict with, each behind one ``predict(sample)``.

An Ollama model (chat API), a GGUF (the vendored llama-server, prompt rendered by the GGUF's
own chat template) or a Hugging Face directory, optionally with an unmerged PEFT adapter
(transformers ``generate``, prompt rendered by the one chat-template renderer).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from deploykit.core.errors import InputError, OllamaError, UsageError
from deploykit.eval.samples import Sample
from deploykit.model.hf_dir import ModelDir, read_json

KINDS = ("ollama", "gguf", "hf")


@dataclass
class ModelSpec:
    """One model to evaluate: ``kind`` (ollama, gguf, hf), ``ref`` (name or path)."""

    kind: str
    ref: str
    adapter: str | None = None
    host: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            if self.kind == "gguf":
                self.label = Path(self.ref).stem
            elif self.kind == "hf":
                self.label = Path(self.ref).name + (
                    f"+{Path(self.adapter).name}" if self.adapter else ""
                )
            else:
                self.label = self.ref


@dataclass
class GenOptions:
    """Generation settings shared by every backend; temperature 0 is greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    seed: int = 0
    #: The dtype a Hugging Face model runs in (``--hf``); GGUF and Ollama models have their own.
    dtype: str = "float32"
    #: False: prompts render with thinking off (LlamaFactory's ``enable_thinking: false``):
    #: ``enable_thinking=False`` to the Jinja (``--hf``, ``--gguf``), ``think: false`` to Ollama.
    enable_thinking: bool = True


DTYPES = ("float32", "bfloat16", "float16", "auto")


def parse_spec(text: str, host: str | None = None) -> ModelSpec:
    """A ``--compare`` model: ``ollama:NAME``, ``gguf:FILE``, ``hf:DIR[+ADAPTER]``, or bare.

    A bare value is a GGUF when it is a file, a Hugging Face directory (or an adapter
    directory, whose base is read from adapter_config.json) when it is a directory, and an
    Ollama model name otherwise.
    """
    kind, sep, rest = text.partition(":")
    if sep and kind in KINDS:
        value = rest
    else:
        path = Path(text)
        kind = "gguf" if path.is_file() else "hf" if path.is_dir() else "ollama"
        value = text
    if kind == "hf":
        base, _, adapter = value.partition("+")
        return hf_spec(Path(base), Path(adapter) if adapter else None)
    if kind == "gguf":
        if not Path(value).is_file():
            raise InputError(f"GGUF not found: {value}", "check the path")
        from deploykit.llamacpp.gguf_header import is_gguf

        if not is_gguf(Path(value)):
            raise InputError(f"{value} is not a GGUF file", "pass a .gguf model file")
        return ModelSpec("gguf", value)
    from deploykit.ollama.names import validate_name

    return ModelSpec("ollama", validate_name(value), host=host)


def hf_spec(path: Path, adapter: Path | None = None) -> ModelSpec:
    """A Hugging Face model; a bare adapter directory brings its base from adapter_config."""
    from deploykit.data.run_folders import refuse_run_folder

    for p in (path, adapter):
        if p is not None and not p.is_dir():
            raise InputError(f"model directory not found: {p}", "check the path")
    if adapter is not None:
        refuse_run_folder(adapter)
    elif not (path / "config.json").is_file():
        refuse_run_folder(path, "--hf")
    cfg = path / "adapter_config.json"
    if adapter is None and cfg.is_file():  # its base, found as merge finds it
        from deploykit.model import base

        config = read_json(cfg)
        name = config.get("base_model_name_or_path")
        found = base.resolve(
            name if isinstance(name, str) else None,
            relative_to=path,
            revision=config.get("revision"),
            why=f" (named by {path})",
        )
        return ModelSpec("hf", str(found.path), adapter=str(path))
    if not ModelDir(path).has_config:
        raise InputError(
            f"{path} is not a Hugging Face model directory (no config.json)",
            "pass the model folder, or an adapter folder (adapter_config.json)",
        )
    return ModelSpec("hf", str(path), adapter=str(adapter) if adapter else None)


class Predictor(Protocol):
    #: The model's own chat template (Jinja, or Ollama's Go TEMPLATE); None if it has none.
    chat_template: str | None

    def predict(self, sample: Sample) -> tuple[str, str]:
        """``(prompt as the model sees it, generated text)`` for one sample."""


class _Ollama:
    def __init__(self, spec: ModelSpec, gen: GenOptions, client: Any, shown: dict) -> None:
        self.spec, self.client, self.can_render = spec, client, True
        self.think = gen.enable_thinking
        self.chat_template = shown.get("template") or None
        self.options = {"num_predict": gen.max_new_tokens, "seed": gen.seed}
        if gen.temperature > 0:
            self.options["temperature"] = gen.temperature
        else:  # greedy: override the Modelfile's sampling parameters
            self.options.update(temperature=0, top_k=1, repeat_penalty=1.0)

    def _request(self, sample: Sample) -> dict:
        req: dict[str, Any] = {"model": self.spec.ref, "messages": sample.messages}
        if sample.tools:
            req["tools"] = sample.tools
        if not self.think:
            req["think"] = False
        return req

    def _prompt(self, sample: Sample) -> str:
        if self.can_render:
            try:
                return self.client.render(self._request(sample))
            except OllamaError:
                self.can_render = False  # Ollama < 0.11.5 cannot show the rendered prompt
        return "\n".join(f"{m['role']}: {m.get('content') or ''}" for m in sample.messages)

    def predict(self, sample: Sample) -> tuple[str, str]:
        final = self.client.chat({**self._request(sample), "options": self.options})
        msg = final.get("message") or {}
        text = msg.get("content") or ""
        if msg.get("tool_calls") and not text:
            text = json.dumps([c.get("function", c) for c in msg["tool_calls"]], ensure_ascii=False)
        return self._prompt(sample), text


class _Gguf:
    def __init__(self, server: Any, gen: GenOptions, chat_template: str | None = None) -> None:
        self.server, self.chat_template = server, chat_template
        self.body: dict[str, Any] = {
            "n_predict": gen.max_new_tokens,
            "seed": gen.seed,
            "repeat_penalty": 1.0,
            "cache_prompt": False,
            "temperature": gen.temperature,
        }
        if gen.temperature <= 0:
            self.body.update(temperature=0, top_k=1)
        self.think = gen.enable_thinking

    def predict(self, sample: Sample) -> tuple[str, str]:
        body: dict[str, Any] = {"messages": sample.messages}
        if sample.tools:
            body["tools"] = sample.tools
        if not self.think:
            body["chat_template_kwargs"] = {"enable_thinking": False}
        prompt = self.server.post("/apply-template", body)["prompt"]
        out = self.server.post("/completion", {"prompt": prompt, **self.body})
        return prompt, out.get("content", "")


class _HF:
    def __init__(self, spec: ModelSpec, gen: GenOptions) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from deploykit.core.ui import quiet_libraries

        self.torch, self.gen = torch, gen
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        tok_dir = spec.ref
        if spec.adapter and ModelDir(Path(spec.adapter)).has_tokenizer:
            tok_dir = spec.adapter
        try:
            with quiet_libraries():
                self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
                dtype = gen.dtype if gen.dtype == "auto" else getattr(torch, gen.dtype)
                model = AutoModelForCausalLM.from_pretrained(spec.ref, dtype=dtype)
                if spec.adapter:
                    from peft import PeftModel

                    model = PeftModel.from_pretrained(model, spec.adapter)
        except (OSError, ValueError) as exc:
            what = " ".join(str(exc).split())  # one line
            raise InputError(f"cannot load {spec.label}: {what}", "check --hf/--adapter") from None
        self.model = model.to(self.device).eval()
        template = self.tokenizer.chat_template
        self.chat_template = template if isinstance(template, str) else None
        eos = model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, list | tuple) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos = eos
        self.pad = model.generation_config.pad_token_id
        if self.pad is None:
            self.pad = (
                self.tokenizer.pad_token_id
                if self.tokenizer.pad_token_id is not None
                else (eos[0] if eos else 0)
            )

    def predict(self, sample: Sample) -> tuple[str, str]:
        from deploykit.model.chat_template import render_tokenizer

        torch, tok = self.torch, self.tokenizer
        thinking = {} if self.gen.enable_thinking else {"enable_thinking": False}
        text = render_tokenizer(
            tok, sample.messages, tools=sample.tools, add_generation_prompt=True, **thinking
        )
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=self.device)
        # the same decoding on every backend: no repetition penalty from generation_config
        kw: dict[str, Any] = {"do_sample": False, "repetition_penalty": 1.0}
        if self.gen.temperature > 0:
            torch.manual_seed(self.gen.seed)
            kw.update(do_sample=True, temperature=self.gen.temperature)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.gen.max_new_tokens,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                **kw,
            )
        prompt = tok.decode(ids[0], skip_special_tokens=False)
        return prompt, tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@contextlib.contextmanager
def open_backend(spec: ModelSpec, gen: GenOptions, ctx_size: int = 4096) -> Iterator[Predictor]:
    """A ready predictor for ``spec`` (model loaded, server started); released on exit.

    A llama-server that dies is the toolchain's failure (``ToolchainError``, exit 6), raised
    as ``llamacpp.server`` raises it: never a quality-gate failure.
    """
    if spec.kind == "ollama":
        from deploykit.ollama.client import Client

        with Client(spec.host) as client:
            shown = client.show(spec.ref)  # fail early and clearly on an unknown name
            predictor = _Ollama(spec, gen, client, shown)
            # no messages: Ollama only loads the model, so loading is not timed as predicting
            client.chat({"model": spec.ref, "messages": [], "options": predictor.options})
            yield predictor
    elif spec.kind == "gguf":
        from deploykit.llamacpp import gguf_header
        from deploykit.llamacpp import server as llama_server

        template = gguf_header.read(Path(spec.ref)).get("tokenizer.chat_template") or None
        with llama_server.serve(Path(spec.ref), ctx_size=ctx_size + gen.max_new_tokens) as srv:
            srv.post("/completion", {"prompt": "Hello", "n_predict": 1})  # warm-up, untimed
            yield _Gguf(srv, gen, template)
    elif spec.kind == "hf":
        yield _HF(spec, gen)
    else:  # pragma: no cover - parse_spec only makes the three kinds
        raise UsageError(f"unknown model kind {spec.kind!r}", f"use one of {', '.join(KINDS)}")
