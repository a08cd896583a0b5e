"""Run the vendored converter with its tensors supplied by a provider instead of read from
the model folder: how a merge is fused into the conversion (no merged copy on disk).

The converter runs unchanged (same options, same processing of every tensor, same vocabulary
and metadata code); only the base class's ``ModelBase.index_tensors``, which reads the model
folder's weights, is replaced by ``PROVIDER(model, LazyTorchTensor, PLAN)``: a
``{name: () -> tensor}`` map in the order the tensors are to be written. They pass through
the class's own ``modify_tensors`` (renames, permutations, fusions), as read ones do.

    python -m deploykit.llamacpp.hooked --tree DIR --provider MODULE:FUNC --plan FILE -- ARGS

A deploykit error raised by the provider (a merge that overflows, say) is reported on stderr
as one ``deploykit-error:`` JSON line; a model class that reads its tensors its own way
(without the base class's reader) as one ``deploykit-fused-unsupported:`` line,
so that the caller falls back to writing the tensors to disk first.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploykit.core import errors
from deploykit.core.errors import ConversionError, DeploykitError

ERROR = "deploykit-error: "
UNSUPPORTED = "deploykit-fused-unsupported: "
UNSUPPORTED_EXIT = 4


class FusedUnsupported(ConversionError):
    """The converter cannot take its tensors from a provider for this model."""


@dataclass(frozen=True)
class TensorSource:
    """Where a hooked conversion's tensors come from: ``provider`` (``MODULE:FUNC``) called
    with ``plan`` in the converter's process; ``shapes`` (``{name: (dtype, shape)}``) sizes the
    output before it runs; ``inputs`` are the files the tensors are read from (never written)."""

    provider: str
    plan: Path
    shapes: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    inputs: tuple[Path, ...] = ()


def command(python: str, tree_path: Path, source: TensorSource, *args: str) -> list[str]:
    """The command line that runs the converter with ``args``, its tensors from ``source``."""
    return [
        python,
        "-m",
        __name__,
        "--tree",
        str(tree_path),
        "--provider",
        source.provider,
        "--plan",
        str(source.plan),
        "--",
        *args,
    ]


def error_from(output: str) -> DeploykitError | None:
    """The deploykit error a hooked converter reported in ``output`` (None when it did not)."""
    for line in reversed(output.splitlines()):
        line = line.rpartition("\r")[2]  # after a progress bar's carriage returns
        if UNSUPPORTED in line:
            return FusedUnsupported(line.partition(UNSUPPORTED)[2].strip()[:300])
        if ERROR in line:
            try:
                data = json.loads(line.partition(ERROR)[2])
                cls = getattr(errors, str(data["class"]), None)
                message, hint = str(data["message"])[:500], data.get("hint")
            except (ValueError, KeyError, TypeError):
                continue
            if not (isinstance(cls, type) and issubclass(cls, DeploykitError)):
                cls = ConversionError
            return cls(message, hint if isinstance(hint, str) else None)
    return None


def _report(prefix: str, text: str, code: int) -> None:
    print("\n" + prefix + text, file=sys.stderr, flush=True)  # on a line of its own
    raise SystemExit(code)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    opts = dict(zip(argv[:split:2], argv[1:split:2], strict=True))
    tree, plan, rest = Path(opts["--tree"]), Path(opts["--plan"]), argv[split + 1 :]
    module_name, func_name = opts["--provider"].split(":")
    provider = getattr(importlib.import_module(module_name), func_name)

    sys.path.insert(0, str(tree))  # the converter's `conversion` package, as its script dir
    spec = importlib.util.spec_from_file_location(
        "convert_hf_to_gguf", tree / "convert_hf_to_gguf.py"
    )
    assert spec is not None and spec.loader is not None
    converter = importlib.util.module_from_spec(spec)
    sys.modules["convert_hf_to_gguf"] = converter
    spec.loader.exec_module(converter)
    from conversion.base import LazyTorchTensor, ModelBase

    called: list[bool] = []

    def index_tensors(self, remote_hf_model_id=None):
        called.append(True)
        return provider(self, LazyTorchTensor, plan)

    # the base class's reader: model classes that override it to set state first, then call
    # it (Llama, Qwen3.5, GLM, ...), get the provider's tensors too
    ModelBase.index_tensors = index_tensors
    pick = converter.get_model_class

    def hooked(name: str, mmproj: bool = False):
        cls = pick(name, mmproj=mmproj)

        def __init__(self, *args, **kwargs):
            cls.__init__(self, *args, **kwargs)
            if not called:  # the class read its tensors without the base class's reader
                _report(
                    UNSUPPORTED,
                    f"the converter's {cls.__name__} reads its tensors its own way",
                    UNSUPPORTED_EXIT,
                )

        return type(cls.__name__, (cls,), {"model_arch": cls.model_arch, "__init__": __init__})

    converter.get_model_class = hooked
    sys.argv = [str(tree / "convert_hf_to_gguf.py"), *rest]
    try:
        converter.main()
    except DeploykitError as exc:
        text = json.dumps({"class": type(exc).__name__, "message": exc.message, "hint": exc.hint})
        _report(ERROR, text, 3)


if __name__ == "__main__":
    main(sys.argv[1:])
