"""Run the vendored converter with its tensors supplied by a provider instead of read from
the model folder: how a merge is fused into the conversion (no merged copy on disk).

The converter runs unchanged (same options, same processing of every tensor, same vocabulary
and metadata code, the same bytes written, around the page cache); only the base
class's ``ModelBase.index_tensors``, which reads the model folder's weights, is replaced by
``PROVIDER(model, LazyTorchTensor, PLAN)``: a ``{name: () -> tensor}`` map in the order the
tensors are to be written. They pass through the class's own ``modify_tensors`` (renames,
permutations, fusions), as read ones do.

    python -P -m deploykit.llamacpp.hooked --tree DIR --provider MODULE:FUNC --plan FILE \
        --report FILE -- ARGS

A deploykit error raised by the provider (a merge that overflows, say) is written to the
report file as JSON, exit 3; a model class that reads its weights its own way (not through
the base class's reader, or files of the weight-less model folder) is reported as
``unsupported``, exit 4, so that the caller falls back to writing the tensors to disk first.
The report is a file of the caller's, not a line of output: the converter logs text that
comes from the model (its chat template), which must not be able to pose as a report.
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
from deploykit.core.fsutil import DirectFile, write_all
from deploykit.core.memory import with_huge_pages

ERROR_EXIT = 3
UNSUPPORTED_EXIT = 4
_BOUND = 500  # characters of a reported message or hint


class FusedUnsupported(ConversionError):
    """The converter cannot take its tensors from a provider for this model."""


@dataclass(frozen=True)
class TensorSource:
    """Where a hooked conversion's tensors come from: ``provider`` (``MODULE:FUNC``) called
    with ``plan`` in the converter's process; ``shapes`` (``{name: (dtype, shape)}``) sizes the
    output before it runs; ``inputs`` are the files the tensors are read from (never written);
    ``scratch_bytes`` the most the provider writes to the plan's folder at once."""

    provider: str
    plan: Path
    shapes: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    inputs: tuple[Path, ...] = ()
    scratch_bytes: int = 0

    @property
    def report(self) -> Path:
        return self.plan.with_name(self.plan.name + ".report")


def command(python: str, tree_path: Path, source: TensorSource, *args: str) -> list[str]:
    """The command line that runs the converter with ``args``, its tensors from ``source``
    (``-P``: the working folder is not on the import path, as it is not for the converter)."""
    return [
        python,
        "-P",
        "-m",
        __name__,
        "--tree",
        str(tree_path),
        "--provider",
        source.provider,
        "--plan",
        str(source.plan),
        "--report",
        str(source.report),
        "--",
        *args,
    ]


def environment(base: dict[str, str]) -> dict[str, str]:
    """``base`` with this deploykit first on the import path (the converter's process runs the
    same code as the caller, installed or not) and PyTorch asked for huge pages."""
    import os

    import deploykit

    root = str(Path(deploykit.__file__).resolve().parent.parent)
    return {
        **with_huge_pages(base),
        "PYTHONPATH": os.pathsep.join(filter(None, [root, base.get("PYTHONPATH")])),
    }


def reported(source: TensorSource, returncode: int) -> DeploykitError | None:
    """The error a hooked converter that exited ``returncode`` reported (None: it did not)."""
    if returncode not in (ERROR_EXIT, UNSUPPORTED_EXIT):
        return None
    try:
        data = json.loads(source.report.read_text(encoding="utf-8"))
        kind, message, hint = data["class"], str(data["message"]), data.get("hint")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    message = " ".join(message.split())[:_BOUND]
    hint = " ".join(hint.split())[:_BOUND] if isinstance(hint, str) else None
    if returncode == UNSUPPORTED_EXIT:
        return FusedUnsupported(message)
    cls = getattr(errors, str(kind), None)
    if not (isinstance(cls, type) and issubclass(cls, DeploykitError)) or cls is errors.Interrupted:
        cls = ConversionError
    return cls(message, hint)


#: Rows of a non-contiguous array made contiguous at a time when it is written (bytes).
_ROWS_BYTES = 4 << 20


def _write_direct() -> None:
    """gguf-py's output files are ``fsutil.DirectFile``s (written around the page cache; the
    same bytes) when every tensor to be written is one whose writing goes through here
    (``write_all``): gguf-py writes each with ``ndarray.tofile``, which needs a real file (and
    makes one write() of the whole tensor, several times slower on this project's machines).
    Anything else (gguf-py's row-chunked tensors, its temp-file mode) gets the files gguf-py
    opens, and the lazy tensors among them are still written through ``write_all``."""
    import numpy as np
    from gguf.gguf_writer import GGUFWriter
    from gguf.lazy import LazyNumpyTensor

    def write_array(fout, a: np.ndarray) -> None:  # what ndarray.tofile writes: C order
        if a.flags.c_contiguous:
            return write_all(fout, a.reshape(-1).view(np.uint8))
        rows = max(1, _ROWS_BYTES // max(1, a[0].nbytes))  # no whole-tensor copy
        for i in range(0, a.shape[0], rows):
            write_all(fout, np.ascontiguousarray(a[i : i + rows]).reshape(-1).view(np.uint8))

    class Eager:
        """An eager array as gguf-py's writer uses a stored tensor: its size and tofile."""

        def __init__(self, a: np.ndarray) -> None:
            self.a, self.nbytes = a, a.nbytes

        def tofile(self, fout) -> None:
            write_array(fout, self.a)

    def tofile(self, fout, *args, **kwargs):
        eager = LazyNumpyTensor.to_eager(self)
        if args or kwargs:
            return eager.tofile(fout, *args, **kwargs)
        write_array(fout, eager)

    def ours(t) -> bool:
        return isinstance(t, (LazyNumpyTensor, np.ndarray))

    open_output_file = GGUFWriter.open_output_file

    def open_direct(self, path=None):
        before = self.fout
        open_output_file(self, path)
        infos = [ti for shard in self.tensors for ti in shard.values()]
        if self.fout is before or self.fout is None or self.temp_file is not None:
            return
        if not all(ours(ti.tensor) for ti in infos):
            return
        opened, self.fout = self.fout, None  # new, empty files: reopened direct
        direct: list[DirectFile] = []
        try:
            for f in opened:
                f.close()
                direct.append(DirectFile(Path(f.name)))
        except BaseException:
            for d in direct:
                d.close(flush=False)
            raise
        for ti in infos:
            if isinstance(ti.tensor, np.ndarray):
                ti.tensor = Eager(ti.tensor)
        self.fout = direct

    LazyNumpyTensor.tofile = tofile
    GGUFWriter.open_output_file = open_direct


def _report(path: Path, data: dict, code: int) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")
    raise SystemExit(code)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    opts = dict(zip(argv[:split:2], argv[1:split:2], strict=True))
    tree, plan, report = Path(opts["--tree"]), Path(opts["--plan"]), Path(opts["--report"])
    rest = argv[split + 1 :]
    module_name, func_name = opts["--provider"].split(":")
    provider = getattr(importlib.import_module(module_name), func_name)

    def unsupported(why: str) -> None:
        _report(report, {"class": "FusedUnsupported", "message": why}, UNSUPPORTED_EXIT)

    sys.path.insert(0, str(tree))  # the converter's `conversion` package, as its script dir
    spec = importlib.util.spec_from_file_location(
        "convert_hf_to_gguf", tree / "convert_hf_to_gguf.py"
    )
    assert spec is not None and spec.loader is not None
    converter = importlib.util.module_from_spec(spec)
    sys.modules["convert_hf_to_gguf"] = converter
    spec.loader.exec_module(converter)
    from conversion.base import LazyTorchTensor, ModelBase

    _write_direct()

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
                unsupported(f"the converter's {cls.__name__} reads its tensors its own way")

        return type(cls.__name__, (cls,), {"model_arch": cls.model_arch, "__init__": __init__})

    converter.get_model_class = hooked
    sys.argv = [str(tree / "convert_hf_to_gguf.py"), *rest]
    model_dir = Path(rest[0]).resolve()
    try:
        converter.main()
    except DeploykitError as exc:
        data = {"class": type(exc).__name__, "message": exc.message, "hint": exc.hint}
        _report(report, data, ERROR_EXIT)
    except FileNotFoundError as exc:  # a weight file of the weight-less folder (MiniMax ...)
        if exc.filename and model_dir in Path(exc.filename).resolve().parents:
            unsupported(f"the converter reads {Path(exc.filename).name} from the model folder")
        raise


if __name__ == "__main__":
    main(sys.argv[1:])
