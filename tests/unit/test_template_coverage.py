"""Coverage: every upstream chat template in the pinned llama.cpp tree through family detection.

A template is *covered* when detection picks a family for it (every probe renders exactly as
one of the family's references; each family's parity proof then holds for it). The test prints
the family detected for each template (``pytest -s``), requires the issue's list, and at least
``MIN_COVERED`` templates in all.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from deploykit.core.errors import InputError
from deploykit.llamacpp.vendor import vendored_tree_dir
from deploykit.ollama import families

#: At least this many upstream templates must be covered (raise it as families land).
MIN_COVERED = 55
#: ... and of those, at least this many proven in CI (a Go TEMPLATE, not a RENDERER).
MIN_PROVEN = 53

#: The templates deploykit issue #15 requires a family for.
REQUIRED = [
    "Qwen-QwQ-32B",
    "Qwen3-Coder",
    "Qwen3.5-4B",
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
    "deepseek-ai-DeepSeek-V3.1",
    "google-gemma-4-31B-it",
    "Mistral-Small-3.2-24B-Instruct-2506",
    "mistralai-Ministral-3-14B-Reasoning-2512",
    "unsloth-mistral-Devstral-Small-2507",
    "HuggingFaceTB-SmolLM3-3B",
    "ibm-granite-granite-3.3-2B-Instruct",
    "ibm-granite-granite-4.0",
    "GLM-4.6",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use",
    "openai-gpt-oss-120b",
    "microsoft-Phi-3.5-mini-instruct",
    "meta-llama-Llama-3.1-8B-Instruct",
    "meta-llama-Llama-3.2-3B-Instruct",
    "meta-llama-Llama-3.3-70B-Instruct",
]

#: Required templates no family covers yet: expected to fail until one lands (then remove
#: the name here; an unexpected pass is reported as XPASS).
PENDING: set[str] = set()


def _templates_dir() -> Path:
    folder = vendored_tree_dir() / "models" / "templates"
    if not folder.is_dir():
        pytest.skip("the vendored llama.cpp tree is not extracted (make vendor)")
    return folder


@cache
def detected() -> dict[str, str | None]:
    """Upstream template name -> the family detection picks (None: no family)."""
    out: dict[str, str | None] = {}
    for path in sorted(_templates_dir().glob("*.jinja")):
        try:
            fam, _ = families.detect(path.read_text(encoding="utf-8"))
            out[path.stem] = fam.name
        except InputError:
            out[path.stem] = None
    return out


def test_every_upstream_template_through_detection():
    found = detected()
    width = max(map(len, found))
    for name, family in found.items():
        print(f"{name:{width}}  {family or '-'}")
    covered = sorted(n for n, f in found.items() if f)
    print(f"covered: {len(covered)} of {len(found)}")
    assert len(found) >= 60  # the pinned tree has them all
    assert len(covered) >= MIN_COVERED, covered
    proven = [n for n in covered if families.get(found[n]).template is not None]
    assert len(proven) >= MIN_PROVEN, sorted(set(covered) - set(proven))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(reason="no family yet", strict=False))
        if n in PENDING
        else n
        for n in REQUIRED
    ],
)
def test_required_template_is_covered(name):
    found = detected()
    assert name in found, f"{name} is not in the pinned llama.cpp tree"
    assert found[name], f"no family covers {name}"
