"""The parity proof: a family's Ollama TEMPLATE renders the probe conversations exactly as its
upstream Jinja chat template does.

The TEMPLATE is rendered by the Go helper (:mod:`deploykit.ollama.gotemplate`: Go's
``text/template`` with Ollama's data model), each reference by transformers (through
:func:`deploykit.model.probes.render_probe`), both with the date fixed. The text must be
identical, with the family's declared allowances only: inside its ``json_spans`` (tool probes)
JSON values are compared parsed (:func:`canonical_json_spans`); the probes a reference
``rejects`` are skipped (and must be exactly the ones it rejects); a ``known_differences``
probe must differ, and render as the Jinja template does on the conversation Ollama really
hands it (:func:`collated`) or with the content Jinja trims (:func:`trimmed`).

API: :func:`prove` (one family, every reference or one) returns :class:`Proof` objects with a
:class:`ProbeResult` per probe; :func:`require` proves a user family once per process (by
content) or refuses it; :func:`helper` builds (and caches) the Go helper or says how to get Go.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit.core import ui
from deploykit.core.errors import ToolchainError
from deploykit.model.chat_template import TemplateBoundError
from deploykit.model.probes import CONVERSATIONS, render_probe
from deploykit.ollama import capabilities, families, gotemplate

#: The fixed date both sides render with (strftime_now on the Jinja side, currentDate in Go).
FIXED_DATE = dt.datetime(2025, 3, 9, 12, 0, 0)
#: A proof compares at least this many probes (fewer: the reference rejects nearly all), or
#: every tool probe (a tool-use template, which rejects conversations without tools).
MIN_COMPARED = 6
TOOL_PROBES = {name for name, probe in CONVERSATIONS.items() if probe.get("tools")}

#: Per-probe outcomes: ``same`` (identical, JSON spans compared parsed), ``declared`` (a known
#: difference, exactly as declared), ``rejected`` (the reference raises on it), ``differs``,
#: ``go-error`` (the TEMPLATE failed on it).
OK_STATUSES = ("same", "declared", "rejected")


# --- the pieces (also used to compare what a server renders) ---------------------------------


def canonical_json_spans(text: str, spans: list[tuple[str, str | None]]) -> str:
    """``text`` with each allowed JSON span (after a ``lead``, values joined by ``separator``)
    replaced by a canonical, marked form: two texts whose spans hold equal JSON become equal."""
    decoder = json.JSONDecoder()
    out: list[str] = []
    pos = 0
    while True:
        hits = [(text.find(lead, pos), lead, sep) for lead, sep in spans]
        hits = [h for h in hits if h[0] >= 0]
        if not hits:
            break
        at, lead, sep = min(hits)
        cur = at + len(lead)
        out.append(text[pos:cur])
        while True:
            try:
                obj, end = decoder.raw_decode(text, cur)
            except ValueError:
                break
            out.append("<JSON " + json.dumps(obj, sort_keys=True, ensure_ascii=False) + ">")
            cur = end
            if not (sep and text.startswith(sep, cur)):
                break
            try:
                decoder.raw_decode(text, cur + len(sep))
            except ValueError:
                break
            out.append(sep)
            cur += len(sep)
        pos = cur
    out.append(text[pos:])
    return "".join(out)


def collated(probe: dict) -> dict:
    """``probe`` as Ollama hands it to a template: consecutive messages of one role (not tool
    results) merged with a blank line between their contents."""
    out: list[dict] = []
    for m in probe["messages"]:
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(dict(m))
    return {**probe, "messages": out}


def continued(probe: dict) -> dict:
    """``probe`` as a renderer that continues one model turn renders it: consecutive assistant
    messages merged, their contents joined as they are."""
    out: list[dict] = []
    for m in probe["messages"]:
        if out and out[-1]["role"] == m["role"] == "assistant":
            out[-1] = {**out[-1], "content": out[-1]["content"] + m["content"]}
        else:
            out.append(dict(m))
    return {**probe, "messages": out}


def trimmed(probe: dict) -> dict:
    """``probe`` with every message's content stripped of leading and trailing whitespace."""
    return {
        **probe,
        "messages": [{**m, "content": m["content"].strip()} for m in probe["messages"]],
    }


def comparable(fam: families.Family, text: str, probe: dict) -> str:
    """``text`` as the proof compares it: the family's JSON spans canonical in tool probes."""
    return canonical_json_spans(text, fam.spans) if probe.get("tools") else text


def same(fam: families.Family, want: str, got: str, probe: dict) -> bool:
    """Whether ``got`` (Go) equals ``want`` (Jinja) under the family's JSON allowance."""
    return comparable(fam, got, probe) == comparable(fam, want, probe)


class _FixedDatetime(dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_DATE


@contextlib.contextmanager
def fixed_date() -> Iterator[None]:
    """Jinja's ``strftime_now`` returns :data:`FIXED_DATE` inside the block."""
    import transformers.utils.chat_template_utils as chat_utils

    previous = chat_utils.datetime
    chat_utils.datetime = _FixedDatetime
    try:
        yield
    finally:
        chat_utils.datetime = previous


def render_jinja(source: str, probe: dict, fam: families.Family) -> str | None:
    """The reference's text for ``probe`` (a runtime BOS removed), None if it rejects it.
    Call inside :func:`fixed_date`. ValueError: the runtime BOS the family declares is not
    there."""
    try:
        text = render_probe(source, probe, bos_token=fam.bos_token, eos_token=fam.eos_token)
    except TemplateBoundError:
        raise
    except Exception:  # raise_exception and friends: the template refuses the conversation
        return None
    if fam.runtime_bos and fam.bos_token:
        if not text.startswith(fam.bos_token):
            raise ValueError(
                f"runtime_bos, but the reference does not start with BOS {fam.bos_token!r}"
            )
        text = text[len(fam.bos_token) :]
    return text


def as_served(probes: dict[str, dict], template: str | None) -> dict[str, dict]:
    """The probes as a real server runs them with ``template``: a request that leaves
    ``think`` out gets ``think: true`` when the TEMPLATE has the thinking capability
    (server/routes.go ChatHandler), so both sides of a comparison render it that way."""
    if template is None or "thinking" not in capabilities.go_capabilities(template):
        return dict(probes)
    return {n: p if p.get("think") is not None else {**p, "think": True} for n, p in probes.items()}


def with_system(probe: dict, system: str | None) -> dict:
    """``probe`` as Ollama hands it to the TEMPLATE of a Modelfile whose SYSTEM is ``system``:
    prepended as a system message when the request does not start with one (server/routes.go).
    The Jinja side renders the probe as it is, so a wrong default system prompt differs."""
    msgs = probe["messages"]
    if not system or (msgs and msgs[0]["role"] == "system"):
        return probe
    return {**probe, "messages": [{"role": "system", "content": system}, *msgs]}


def go_cases(probes: dict[str, dict]) -> list[dict]:
    """The probes as the Go helper's cases (Ollama's request shape, the fixed date)."""
    return [
        {
            "messages": p["messages"],
            "tools": p.get("tools"),
            "think": p.get("think"),
            "date": FIXED_DATE.strftime("%Y-%m-%d"),
        }
        for p in probes.values()
    ]


def helper(root: Path | None = None) -> Path:
    """The Go helper binary, built once per source and Go version (cached under
    ``~/.cache/deploykit/gotemplate``); ToolchainError when Go is not installed."""
    if not shutil.which("go"):
        raise ToolchainError(
            "proving a template family needs Go (the Go template helper), which is not installed",
            "apt-get install golang-go, or see https://go.dev/dl",
        )
    return gotemplate.build(root)


# --- the proof -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """One probe's outcome (see ``OK_STATUSES``); ``detail`` shows a difference briefly."""

    probe: str
    status: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES


@dataclass(frozen=True)
class Proof:
    """A family's TEMPLATE against one reference: per-probe results and proof-level problems
    (rejects not as declared, a declared difference that is exact, too few probes, a wrong
    tool-call tag)."""

    family: str
    reference: str
    results: list[ProbeResult]
    problems: list[str] = field(default_factory=list)
    #: Why nothing was compared (a family Ollama's built-in renderer renders: no TEMPLATE).
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.results)

    @property
    def compared(self) -> int:
        return sum(r.status != "rejected" for r in self.results)

    def failures(self) -> list[str]:
        """One line per failing probe, then each problem."""
        bad = [
            f"probe {r.probe}: {r.status}" + (f": {r.detail}" if r.detail else "")
            for r in self.results
            if not r.ok
        ]
        return bad + self.problems

    def lines(self) -> list[str]:
        """Every probe's result (one line each), then the problems."""
        if self.skipped:
            return [f"SKIP {self.family} against {self.reference}: {self.skipped}"]
        head = f"{'PASS' if self.ok else 'FAIL'} {self.family} against {self.reference}"
        rows = [
            f"  {r.status:9} {r.probe}" + (f"  {r.detail}" if r.detail else "")
            for r in self.results
        ]
        return [head, *rows, *(f"  problem: {p}" for p in self.problems)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "reference": self.reference,
            "ok": self.ok,
            "results": [
                {"probe": r.probe, "status": r.status, "detail": r.detail} for r in self.results
            ],
            "problems": self.problems,
            "skipped": self.skipped,
        }


def _brief(want: str, got: str, width: int = 40) -> str:
    """Where ``got`` (Go) leaves ``want`` (Jinja), a few characters each side."""
    at = len(os.path.commonprefix([want, got]))
    lo = max(0, at - width)
    return f"at char {at}: jinja {want[lo : at + width]!r}, go {got[lo : at + width]!r}"


def prove_reference(fam: families.Family, reference: str, binary: Path | None = None) -> Proof:
    """Prove ``fam``'s TEMPLATE against its reference template ``reference``."""
    if fam.template is None:
        why = f"renderer {fam.renderer}: Ollama renders it, proven at deploy time only"
        return Proof(fam.name, reference, [], skipped=why + " (deploykit health --reference)")
    binary = binary or helper()
    source = fam.reference_path(reference).read_text(encoding="utf-8")
    probes = as_served(CONVERSATIONS, fam.template)
    cases = {n: with_system(p, fam.default_system) for n, p in probes.items()}
    if "whitespace" in fam.known_differences:  # Ollama sends the content as it is
        cases["whitespace@trimmed"] = with_system(trimmed(probes["whitespace"]), fam.default_system)
    try:
        rendered = gotemplate.render(binary, fam.template, go_cases(cases))
    except ValueError as exc:  # the TEMPLATE does not parse
        return Proof(fam.name, reference, [], [f"the TEMPLATE does not parse: {exc}"])
    outputs = dict(zip(cases, rendered, strict=True))
    results, problems = [], []
    with fixed_date():
        for name, probe in probes.items():
            try:
                want = render_jinja(source, probe, fam)
            except ValueError as exc:
                results.append(ProbeResult(name, "differs", str(exc)))
                continue
            if want is None:
                results.append(ProbeResult(name, "rejected"))
                continue
            go = outputs[name]
            if "error" in go:
                results.append(ProbeResult(name, "go-error", str(go["error"])[:200]))
                continue
            got = go["output"]
            if name not in fam.known_differences:
                ok = same(fam, want, got, probe)
                results.append(
                    ProbeResult(
                        name,
                        "same" if ok else "differs",
                        "" if ok else _brief(*(comparable(fam, t, probe) for t in (want, got))),
                    )
                )
                continue
            if same(fam, want, got, probe):
                problems.append(f"{name}: declared in known_differences, but renders exactly")
            if name == "consecutive_roles":  # what Ollama renders is Jinja's merged conversation
                want = render_jinja(source, collated(probe), fam)
            else:  # Jinja trims the content; with trimmed content the TEMPLATE renders the same
                got = outputs["whitespace@trimmed"].get("output", "")
            ok = want is not None and same(fam, want, got, probe)
            results.append(
                ProbeResult(
                    name,
                    "declared" if ok else "differs",
                    "" if ok else _brief(*(comparable(fam, t, probe) for t in (want or "", got))),
                )
            )
    rejected = {r.probe for r in results if r.status == "rejected"}
    declared = fam.rejects(reference)
    if rejected != declared:
        problems.append(
            f"the reference rejects {sorted(rejected)}, but rejects = {sorted(declared)}"
        )
    compared = {r.probe for r in results if r.status != "rejected"}
    if len(compared) < MIN_COMPARED and compared != TOOL_PROBES:
        problems.append(f"only {len(compared)} probes compared (at least {MIN_COMPARED})")
    why = capabilities.gguf_template_wins(fam.template, source)
    if why:  # then Ollama >= 0.30 renders the GGUF's Jinja, and the TEMPLATE never runs
        problems.append(f"Ollama >= 0.30 would not run this TEMPLATE: {why}")
    if fam.tools:
        tag = gotemplate.tool_tag(binary, fam.template)
        if tag != fam.tool_call_tag:
            problems.append(
                f"Ollama derives tool-call tag {tag!r} from the TEMPLATE, not {fam.tool_call_tag!r}"
            )
    return Proof(fam.name, reference, results, problems)


def prove(
    fam: families.Family, reference: str | None = None, binary: Path | None = None
) -> list[Proof]:
    """Prove ``fam`` against each of its references (or just ``reference``)."""
    if fam.template is not None:
        binary = binary or helper()
    names = [reference] if reference else fam.reference_names
    return [prove_reference(fam, name, binary) for name in names]


_PROVEN: dict[str, list[Proof]] = {}


def require(fam: families.Family) -> list[Proof]:
    """Prove ``fam`` once per process (cached by its content hash); a failing proof is an
    InputError with the per-probe summary."""
    key = fam.content_hash()
    if key not in _PROVEN:
        _PROVEN[key] = prove(fam)
        for proof in _PROVEN[key]:
            if proof.skipped:
                ui.warn(f"user family {fam.name}: {proof.skipped}")
    proofs = _PROVEN[key]
    failed = [p for p in proofs if not p.ok]
    if failed:
        details = [f"{p.reference}: {line}" for p in failed for line in p.failures()]
        raise families.DetailedInputError(
            f"user family {fam.name} ({fam.folder}) fails its parity proof "
            f"({len(details)} problem(s)); it is not used",
            f"fix {fam.name}.gotmpl / {fam.name}.toml, then run "
            f"`deploykit templates prove --families-dir {fam.folder} {fam.name}`",
            details[:12] + ([f"... {len(details) - 12} more"] if len(details) > 12 else []),
        )
    return proofs
