"""The one reader of a Hugging Face model folder: config, tokenizer, chat template, generation.

Every command that looks into a model folder (merge, convert, verify, modelfile, health,
train, eval) asks :class:`ModelDir`, so they all agree on which chat template a model has,
which tokens end a turn and which files make up its tokenizer.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError
from deploykit.model.chat_template import ChatSpec

#: Files that make up a tokenizer (copied with it; the chat template belongs to it too).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
#: Of those, the ones that hold a vocabulary: a folder without any has no usable tokenizer.
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
#: Tensor names the config check reads sizes from (across architectures).
_LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight")
MLP_UP = ("mlp.up_proj.weight", "mlp.gate_proj.weight")
#: Named templates beside ``chat_template.jinja`` (transformers' layout).
ADDITIONAL_TEMPLATES = "additional_chat_templates"
#: What a training run leaves in its output folder, ``cutoff_len`` (the longest sequence it
#: trained on) among it: deploykit's trainer, and LlamaFactory (its web UI's runs).
TRAINING_RECORDS = ("train_args.yaml", "training_args.yaml")
#: The longest context a training record is believed about (2M tokens); also num_ctx's bound.
MAX_CONTEXT = 1 << 21
_MAX_RECORD_BYTES = 1 << 20
#: What deploykit's merge writes beside a merged model: where it came from.
PROVENANCE = "deploykit_merge.json"
#: The provenance key of a merged model's folder written without its weights (the merge was
#: fused into the GGUF conversion): ``{"base": DIR, "adapters": [DIR, ...]}``.
OVERLAY = "weights_from"


def read_json(path: Path, *, required: bool = False) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when absent (unless ``required``); InputError if bad."""
    path = Path(path)
    if not path.is_file():
        if required:
            raise InputError(f"{path} not found", "check the model folder")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "fix or re-download the file") from None
    except RecursionError:  # nesting deeper than Python's recursion limit
        raise InputError(f"{path} is nested too deeply", "fix or re-download the file") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON object", "fix or re-download the file")
    return data


def token_text(tok: Any) -> str:
    """A special token as text (tokenizer_config writes some as ``{"content": ...}``)."""
    if isinstance(tok, dict):
        return str(tok.get("content") or "")
    return str(tok or "")


class ModelDir:
    """A Hugging Face model folder (merged model, base, or the tokenizer side of an adapter)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise InputError(f"model folder not found: {self.path}", "check the path")

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    def json(self, name: str) -> dict[str, Any]:
        """``name`` (a JSON file in the folder) as an object; ``{}`` when it is absent."""
        return read_json(self.path / name)

    # --- config and weights ---------------------------------------------------------------

    @property
    def has_config(self) -> bool:
        return (self.path / "config.json").is_file()

    @cached_property
    def config(self) -> dict[str, Any]:
        if not self.has_config:
            raise InputError(
                f"{self.path} has no config.json",
                "pass a Hugging Face model directory (config.json, weights, tokenizer files)",
            )
        return read_json(self.path / "config.json")

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
            raise InputError(
                f'{self.path / "config.json"} names no architecture ("architectures" is missing)',
                'add e.g. "architectures": ["Qwen2ForCausalLM"] to config.json',
            )
        return archs[0]

    @cached_property
    def weights_from(self) -> tuple[Path, list[Path]] | None:
        """``(base, adapters)`` for a merged model's folder written without weights (a fused
        merge), whose fine-tune is the base with those adapters; None for any other folder."""
        if self.weight_files() or not (self.path / PROVENANCE).is_file():
            return None
        src = read_json(self.path / PROVENANCE).get(OVERLAY)
        if not isinstance(src, dict):
            return None
        base, ads = src.get("base"), src.get("adapters")
        if not isinstance(base, str) or not isinstance(ads, list) or not ads:
            raise InputError(f"{self.path / PROVENANCE}: {OVERLAY} is malformed", "merge again")
        if not all(isinstance(a, str) for a in ads):
            raise InputError(f"{self.path / PROVENANCE}: {OVERLAY} is malformed", "merge again")
        from deploykit.core.fsutil import sha256_file

        recorded = read_json(self.path / PROVENANCE).get("adapters")
        if not isinstance(recorded, list) or len(recorded) != len(ads):
            raise InputError(f"{self.path / PROVENANCE}: {OVERLAY} is malformed", "merge again")
        for adapter, rec in zip(ads, recorded, strict=True):
            weights = Path(adapter) / "adapter_model.safetensors"
            want = rec.get("sha256") if isinstance(rec, dict) else None
            if not weights.is_file() or sha256_file(weights) != want:
                raise InputError(
                    f"{self.path} has no weights and the adapter it was merged from, {adapter}, "
                    "is gone or has changed",
                    "merge again (or ship again), with the adapter where it was",
                )
        return Path(base), [Path(a) for a in ads]

    def load_causal_lm(self, dtype: Any, weights_from: tuple[Path, list[Path]] | None = None):
        """The model in transformers; for a weight-less merged folder (``weights_from``, or
        the folder's own record of it), the base with its adapters applied by peft: all but
        the last merged, the last unmerged (the fine-tune itself, as it ran in training), the
        vocabulary sized as config.json says."""
        from transformers import AutoModelForCausalLM

        src = weights_from or self.weights_from
        if src is None:
            return AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        import torch
        from peft import PeftModel

        base, ads = src
        try:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
            vocab = self.config.get("vocab_size")
            if isinstance(vocab, int) and vocab != model.get_input_embeddings().weight.shape[0]:
                torch.manual_seed(0)  # rows the adapter does not save: the same on every run
                model.resize_token_embeddings(vocab, mean_resizing=False)
            for i, adapter in enumerate(ads):
                model = PeftModel.from_pretrained(model, adapter)
                if i < len(ads) - 1:
                    model = model.merge_and_unload()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise InputError(
                f"cannot load the fine-tune ({base} with {', '.join(map(str, ads))}): "
                + " ".join(str(exc).split())[:300],
                "check that the base and adapters are the ones the model was merged from",
            ) from None
        return model

    def weight_files(self) -> list[Path]:
        """The weights: safetensors files, else pickled ``pytorch_model*.bin`` ones."""
        files = sorted(self.path.glob("*.safetensors"))
        return files or sorted(self.path.glob("pytorch_model*.bin"))

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the safetensors weights and its shape, from the headers (no data is
        read); a truncated or corrupt file is an InputError naming it."""
        from safetensors import safe_open

        shapes: dict[str, tuple[int, ...]] = {}
        for f in self.weight_files():
            if f.suffix != ".safetensors":
                continue
            try:
                with safe_open(str(f), "numpy") as fh:
                    for key in fh.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                        shapes[key] = tuple(fh.get_slice(key).get_shape())
            except Exception as exc:  # SafetensorError and OSError: the file is unusable
                raise InputError(
                    f"{f} is a truncated or corrupt safetensors file ({exc})",
                    "copy or download it again",
                ) from None
        return shapes

    def check_weights(self) -> None:
        """The config must describe the weights: layer count, hidden, vocabulary and
        intermediate sizes against tensor names and shapes (InputError naming the key)."""
        shapes = self.weight_shapes()
        if not shapes:
            return
        cfg = self.config
        layers = {int(m.group(1)) for k in shapes if (m := _LAYER.search(k))}
        emb = next((s for k, s in shapes.items() if k.endswith(EMBEDDINGS) and len(s) == 2), None)
        up = next((s for k, s in shapes.items() if k.endswith(MLP_UP) and len(s) == 2), None)
        facts = [
            ("num_hidden_layers", len(layers) if layers else None),
            ("vocab_size", emb[0] if emb else None),
            ("hidden_size", emb[1] if emb else None),
            ("intermediate_size", up[0] if up else None),
        ]
        for key, have in facts:
            want = cfg.get(key)
            if have is None or want is None:
                continue
            ok = isinstance(want, int) and not isinstance(want, bool)
            # a vocabulary padded in the weights is fine; a config larger than the weights is not
            if not ok or (want != have if key != "vocab_size" else want > have):
                raise InputError(
                    f"{self.path / 'config.json'} says {key} = {want!r}, the weights have {have}",
                    "config.json does not belong to these weights; restore the model's own",
                )

    # --- tokenizer ------------------------------------------------------------------------

    @property
    def has_tokenizer(self) -> bool:
        return any((self.path / n).is_file() for n in VOCABULARY_FILES)

    def tokenizer_files(self) -> list[Path]:
        """The tokenizer's files that exist here (``additional_chat_templates/`` included)."""
        found = [self.path / n for n in TOKENIZER_FILES if (self.path / n).is_file()]
        extra = self.path / ADDITIONAL_TEMPLATES
        return found + (sorted(extra.glob("*.jinja")) if extra.is_dir() else [])

    @cached_property
    def tokenizer_config(self) -> dict[str, Any]:
        return self.json("tokenizer_config.json")

    @cached_property
    def generation_config(self) -> dict[str, Any]:
        return self.json("generation_config.json")

    def tokenizer(self):
        """``tokenizer.json`` loaded by the ``tokenizers`` library itself, or None.

        Not ``AutoTokenizer``: transformers 5 rebuilds some tokenizers (Qwen2) from code and
        would hide a broken tokenizer.json.
        """
        from tokenizers import Tokenizer

        path = self.path / "tokenizer.json"
        if not path.is_file():
            return None
        try:
            return Tokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception on a bad file
            raise InputError(f"cannot load {path}: {exc}", "restore tokenizer.json") from None

    @cached_property
    def added_tokens(self) -> dict[int, str]:
        """Special and added tokens by id (tokenizer_config.json and tokenizer.json)."""
        out: dict[int, str] = {}
        decoder = self.tokenizer_config.get("added_tokens_decoder") or {}
        if isinstance(decoder, dict):
            for key, tok in decoder.items():
                if str(key).isdigit():
                    out[int(key)] = token_text(tok)
        tj = self.json("tokenizer.json") if (self.path / "tokenizer.json").is_file() else {}
        for tok in tj.get("added_tokens") or []:
            if isinstance(tok, dict) and isinstance(tok.get("id"), int):
                out[tok["id"]] = str(tok.get("content", ""))
        return out

    @property
    def bos_token(self) -> str:
        return token_text(self.tokenizer_config.get("bos_token"))

    @property
    def eos_token(self) -> str:
        return token_text(self.tokenizer_config.get("eos_token"))

    @property
    def add_bos_token(self) -> bool | None:
        value = self.tokenizer_config.get("add_bos_token")
        return value if isinstance(value, bool) else None

    def token_id(self, text: str) -> int | None:
        """The id of token ``text`` (added tokens first, else the vocabulary)."""
        for i, t in self.added_tokens.items():
            if t == text:
                return i
        tok = self.tokenizer() if text else None
        return tok.token_to_id(text) if tok is not None else None

    @cached_property
    def eos_token_ids(self) -> list[int]:
        """Every id that ends generation: generation_config, config, the tokenizer's eos."""
        ids: list[int] = []
        for source in (self.generation_config, self.json("config.json")):
            eos = source.get("eos_token_id")
            for i in eos if isinstance(eos, list) else [eos]:
                if isinstance(i, int) and not isinstance(i, bool) and i not in ids:
                    ids.append(i)
        tid = self.token_id(self.eos_token) if self.eos_token else None
        if tid is not None and tid not in ids:
            ids.append(tid)
        return ids

    @cached_property
    def end_tokens(self) -> list[str]:
        """The texts of the tokens that end a turn (the eos token first)."""
        texts = [self.eos_token] + [self.added_tokens.get(i, "") for i in self.eos_token_ids]
        return list(dict.fromkeys(t for t in texts if t))

    @property
    def sampling(self) -> dict[str, float | int | bool]:
        """Numeric sampling settings from generation_config.json (transformers' names), and
        ``do_sample`` when it is a boolean (false: greedy decoding)."""
        out: dict[str, float | int | bool] = {
            k: v
            for k, v in self.generation_config.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if isinstance(self.generation_config.get("do_sample"), bool):
            out["do_sample"] = self.generation_config["do_sample"]
        return out

    @cached_property
    def training_context(self) -> int | None:
        """The context the model was trained at: ``cutoff_len`` from the training run's record
        in this folder (:data:`TRAINING_RECORDS`), or None when there is none. InputError when
        the record is unreadable or its cutoff_len is not a whole number from 1 to
        :data:`MAX_CONTEXT`."""
        for name in TRAINING_RECORDS:
            path = self.path / name
            if not path.is_file():
                continue
            value = _read_yaml(path).get("cutoff_len")
            if value is None:
                continue
            if not (isinstance(value, int) and not isinstance(value, bool)) or not (
                1 <= value <= MAX_CONTEXT
            ):
                raise InputError(
                    f"{path} says cutoff_len = {value!r}, not a whole number of tokens from 1 "
                    f"to {MAX_CONTEXT}",
                    "fix cutoff_len there, or give the context with --param num_ctx=N",
                )
            return value
        return None

    # --- chat template --------------------------------------------------------------------

    @cached_property
    def chat_templates(self) -> str | list[dict[str, str]] | None:
        """The chat template(s) transformers would use, as the converter embeds them.

        ``chat_template.jinja`` (plus ``additional_chat_templates/*.jinja``, as named
        templates) wins over tokenizer_config.json's ``chat_template``, which wins over
        ``chat_template.json`` (what processors save).
        """
        jinja = self.path / "chat_template.jinja"
        if jinja.is_file():
            default = _read_text(jinja)
            extra = self.path / ADDITIONAL_TEMPLATES
            named = sorted(extra.glob("*.jinja")) if extra.is_dir() else []
            if not named:
                return default
            return [{"name": "default", "template": default}] + [
                {"name": p.stem, "template": _read_text(p)} for p in named
            ]
        for source in (self.tokenizer_config, self.json("chat_template.json")):
            tmpl = source.get("chat_template")
            if isinstance(tmpl, str) and tmpl:
                return tmpl
            if isinstance(tmpl, list) and tmpl:
                named = [
                    t for t in tmpl if isinstance(t, dict) and isinstance(t.get("template"), str)
                ]
                if named:
                    return named
        return None

    @property
    def chat_template(self) -> str | None:
        """The default chat template (the one named ``default`` among several)."""
        return default_template(self.chat_templates)

    def chat_spec(self) -> ChatSpec:
        """What rendering this model's chat template needs: template, BOS and EOS."""
        return ChatSpec(
            self.chat_template, self.bos_token, self.eos_token, self.add_bos_token, str(self.path)
        )


def default_template(tmpl: str | list[dict[str, str]] | None) -> str | None:
    """The default template out of a string or a list of named templates."""
    if isinstance(tmpl, list):
        for item in tmpl:
            if item.get("name") == "default":
                return item.get("template")
        return tmpl[0].get("template") if tmpl else None
    return tmpl


def _read_yaml(path: Path) -> dict[str, Any]:
    """A small YAML mapping (a training record); InputError when it is not one."""
    import yaml

    bad = "fix the file, or move it out of the model folder"
    try:
        if path.stat().st_size > _MAX_RECORD_BYTES:
            raise InputError(f"{path} is larger than {_MAX_RECORD_BYTES} bytes", bad)
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read {path}: {detail}", bad) from None
    except RecursionError:
        raise InputError(f"{path} is nested too deeply", bad) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a YAML mapping", bad)
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "fix or re-download the file") from None
