"""``deploykit templates scaffold``: a starting family for a chat template no family matches.

It writes, in a user families folder, ``<name>.toml`` and ``<name>.gotmpl`` copied from the
nearest family with a Go TEMPLATE (:func:`families.nearest`), and ``references/<name>.jinja``,
the model's own template, with the model's BOS/EOS and the probes the template rejects
already filled in. The user edits the TEMPLATE until ``deploykit templates prove`` passes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploykit.core.errors import InputError
from deploykit.core.fsutil import atomic_write_text
from deploykit.model.hf_dir import ModelDir
from deploykit.model.probes import CONVERSATIONS
from deploykit.ollama import families

#: Keys of ``<name>.toml`` in the order written (the schema's, as modelfile_templates/ has them).
_ORDER = [k for k in families.FamilyFile.model_fields if k not in ("references", "json_spans")]


@dataclass(frozen=True)
class Scaffolded:
    """What :func:`scaffold` wrote and where it started from."""

    name: str
    folder: Path
    files: list[Path]
    nearest: families.Nearest

    def next_steps(self) -> list[str]:
        near = self.nearest
        first = f" (first difference: probe {near.probe!r})" if near.probe else ""
        exact = [
            f"note: family {near.family.name} already matches exactly (detection picks it): "
            "no new family is needed"
        ]
        return [
            *(exact if near.exact else []),
            f"started from family {near.family.name}: {near.same} of {near.total} probes "
            f"render identically{first}",
            f"1. edit {self.folder / (self.name + '.gotmpl')} (and {self.name}.toml: stop, "
            f"control_tokens, tools, ...) until it renders like references/{self.name}.jinja",
            f"2. prove it: deploykit templates prove --families-dir {self.folder} {self.name}",
            f"3. use it: deploykit --families-dir {self.folder} ship ... "
            f"(or export DEPLOYKIT_FAMILIES_DIR={self.folder})",
        ]


def default_name(model_dir: Path) -> str:
    """A family name from the model folder's name (lower case, ``[a-z0-9._-]``)."""
    name = re.sub(r"[^a-z0-9._-]+", "-", Path(model_dir).resolve().name.lower()).strip("-._")
    return name or "my-family"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):  # a JSON string is a TOML basic string
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def family_toml(data: dict[str, Any], comment: str = "") -> str:
    """``<name>.toml`` text for the family data ``data`` (a :class:`families.FamilyFile` dump)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for key in _ORDER:
        value = data.get(key)
        if key == "parameters" or value is None or value == []:
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    if data.get("parameters"):
        lines += ["", "[parameters]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in data["parameters"].items()]
    for table in ("references", "json_spans"):
        for row in data.get(table) or []:
            lines += ["", f"[[{table}]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in row.items() if v not in (None, [])]
    return "\n".join(lines) + "\n"


def scaffold(
    model_dir: Path, out: Path, name: str | None = None, *, force: bool = False
) -> Scaffolded:
    """Write a starting family for ``model_dir``'s chat template into the folder ``out``."""
    md = ModelDir(model_dir)
    spec = md.chat_spec()
    template = spec.require("to scaffold a family from")
    name = name or default_name(model_dir)
    if not families._NAME.fullmatch(name):
        raise InputError(f"{name!r} is not a family name", "use letters, digits, '.', '_', '-'")
    out = Path(out)
    toml_path, gotmpl_path = out / f"{name}.toml", out / f"{name}.gotmpl"
    jinja_path = families.reference_path(name, out)
    if not force:
        for path in (toml_path, gotmpl_path, jinja_path):
            if path.exists():
                raise InputError(f"{path} exists", "pass --force to overwrite, or --name NEW")
    go_families = {n: f for n, f in families.families().items() if f.template is not None}
    near = families.nearest(
        template, bos_token=spec.bos_token, eos_token=spec.eos_token, fams=go_families
    )
    if near is None:
        raise InputError("there is no family with a Go TEMPLATE to start from")
    base = near.family
    outcomes = families.fingerprint(template, spec.bos_token, spec.eos_token)
    rejects = [p for p, o in zip(CONVERSATIONS, outcomes, strict=True) if o.startswith("error:")]
    user = next((o for p, o in zip(CONVERSATIONS, outcomes, strict=True) if p == "user"), "")
    data = base.model_dump(
        exclude={"name", "template", "folder", "user", "renderer", "parser", "auto_architectures"}
    )
    data.update(
        description=f"{name} (started from {base.name}: edit me)",
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        runtime_bos=bool(spec.bos_token) and user.startswith("ok:" + spec.bos_token),
        references=[{"name": name, "rejects": rejects}],
    )
    text = family_toml(
        data,
        f"Scaffolded by `deploykit templates scaffold` from family {base.name} for {md.path}.\n"
        f"Edit {name}.gotmpl, then: deploykit templates prove --families-dir {out} {name}",
    )
    out.mkdir(parents=True, exist_ok=True)
    jinja_path.parent.mkdir(exist_ok=True)
    atomic_write_text(jinja_path, template)
    atomic_write_text(gotmpl_path, base.template + "\n")
    atomic_write_text(toml_path, text)
    families.load_family(toml_path)  # what was written loads (the schema holds)
    return Scaffolded(name, out, [toml_path, gotmpl_path, jinja_path], near)
