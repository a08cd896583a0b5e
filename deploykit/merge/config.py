"""adapter_config.json as peft reads it: value checks, and peft's rules for the modules it targets.

peft builds its config class from this file and does arithmetic and regex matching with the
values; a value of the wrong type makes peft fail to load the adapter, so deploykit refuses it
first, naming the field (InputError). ``targets`` is peft's ``check_target_module_exists``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from deploykit.core.errors import InputError, MergeError

HINT = "fix adapter_config.json (peft refuses this value too), or re-save the adapter with peft"
#: target_modules values that peft expands itself instead of matching them.
SHORTHANDS = ("all-linear", "dummy-target-modules")


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _number(x) -> bool:
    return (_int(x) or isinstance(x, float)) and math.isfinite(x)


def _regex(text: str) -> bool:
    try:
        re.compile(text)
    except (re.error, RecursionError, OverflowError):
        return False
    return True


def _strings(x, wrap: str = "{}") -> bool:
    """A regex string or a list of names, each usable inside peft's pattern ``wrap``."""
    if isinstance(x, str):
        return _regex(wrap.format(x))
    return isinstance(x, list) and all(isinstance(s, str) and _regex(wrap.format(s)) for s in x)


def _indices(x) -> bool:
    return isinstance(x, list) and all(_int(i) and i >= 0 for i in x)


def _pattern(x, value_ok) -> bool:
    """rank_pattern / alpha_pattern: ``{regex: value}``, keys used as ``(.*\\.)?(KEY)$``."""
    return isinstance(x, dict) and all(
        _regex(rf"(.*\.)?({k})$") and value_ok(v) for k, v in x.items()
    )


#: field -> (what it must be, test); a field that is absent (or null where allowed) is fine.
_RULES = {
    "peft_type": ("a string", lambda x: isinstance(x, str)),
    "base_model_name_or_path": ("a string", lambda x: x is None or isinstance(x, str)),
    "revision": ("a string", lambda x: x is None or isinstance(x, str)),
    "r": ("a positive integer", lambda x: _int(x) and x > 0),
    "init_r": ("a positive integer", lambda x: _int(x) and x > 0),
    "lora_alpha": ("a finite number", _number),
    "alpha_pattern": (
        "a map of regexes to numbers",
        lambda x: x is None or _pattern(x, _number),
    ),
    "use_rslora": ("true or false", lambda x: x is None or isinstance(x, bool)),
    "use_dora": ("true or false", lambda x: x is None or isinstance(x, bool)),
    "fan_in_fan_out": ("true or false", lambda x: x is None or isinstance(x, bool)),
    "lora_bias": ("true or false", lambda x: x is None or isinstance(x, bool)),
    "init_lora_weights": ("true, false or a method name", lambda x: isinstance(x, bool | str)),
    "target_modules": ("a regex or a list of names", lambda x: x is None or _strings(x)),
    "exclude_modules": ("a regex or a list of names", lambda x: x is None or _strings(x)),
    "feedforward_modules": ("a regex or a list of names", lambda x: x is None or _strings(x)),
    "modules_to_save": (
        "a list of module names",
        lambda x: x is None or (isinstance(x, list) and _strings(x, r"(^|.*\.){}($|\..*)")),
    ),
    "layers_to_transform": (
        "a layer index or a list of them",
        lambda x: x is None or _int(x) or (isinstance(x, list) and all(_int(i) for i in x)),
    ),
    "layers_pattern": (
        "a name or a list of names",
        lambda x: x is None or _strings(x, r"(?:^|.*?\.){}\.(?P<idx>\d+)\."),
    ),
    "trainable_token_indices": (
        "a list of token ids (>= 0) or a map of module names to such lists",
        lambda x: (
            x is None
            or _indices(x)
            or (isinstance(x, dict) and all(_indices(v) for v in x.values()))
        ),
    ),
}
_RULES["token_indices"] = _RULES["trainable_token_indices"]


def check(path: Path, cfg: dict, kind: str) -> None:
    """InputError naming the first field of ``cfg`` (read from ``path``) that peft cannot use."""
    for field, (want, ok) in _RULES.items():
        if field in cfg and not ok(cfg[field]):
            shown = repr(cfg[field])
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise InputError(f"{path}: {field} must be {want}, not {shown}", HINT)
    patterns = cfg.get("rank_pattern")
    if patterns is not None:
        # LoRA maps modules to ranks; AdaLoRA saves its rank masks here
        value_ok = (lambda v: _int(v) and v > 0) if kind != "ADALORA" else (lambda v: True)
        if not _pattern(patterns, value_ok):
            raise InputError(
                f"{path}: rank_pattern must be a map of regexes to positive ranks", HINT
            )


def pattern_value(patterns: dict | None, module: str, default):
    """peft >= 0.15: first key k (in order) with re.match(rf"(.*\\.)?({k})$", module)."""
    for k, v in (patterns or {}).items():
        if re.match(rf"(.*\.)?({k})$", module):
            return v
    return default


def _layer_ok(cfg: dict, key: str) -> bool:
    """``layers_to_transform``: the first numbered segment (after ``layers_pattern``)."""
    indexes = cfg.get("layers_to_transform")
    if indexes is None or indexes == []:
        return True
    patterns = cfg.get("layers_pattern")
    match = None
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        for p in [patterns] if isinstance(patterns, str) else patterns:
            if match := re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key):
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == indexes if _int(indexes) else index in indexes


def targets(cfg: dict, key: str) -> bool | None:
    """Whether peft puts an adapter layer on module ``key``: True, False, or None (excluded)."""
    exclude = cfg.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, key):
                return None
        elif key in exclude or any(key.endswith(f".{e}") for e in exclude):
            return None
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in cfg.get("modules_to_save") or []):
        return None
    wanted = cfg.get("target_modules")
    if wanted is None:
        return False
    if isinstance(wanted, str):
        return re.fullmatch(wanted, key) is not None
    if key in wanted:
        return True
    return any(key.endswith(f".{t}") for t in wanted) and _layer_ok(cfg, key)


def check_targets(path: Path, cfg: dict, modules: set[str]) -> None:
    """peft refuses an adapter whose ``target_modules`` match no module of the base."""
    wanted = cfg.get("target_modules")
    if not wanted or wanted in SHORTHANDS:
        return
    if not any(targets(cfg, m) for m in modules):
        raise MergeError(
            f"{path}: target_modules {wanted!r} match no module of the base model "
            "(peft refuses to load it)",
            "check that the adapter was trained on this base (--base)",
        )


def feedforward(cfg: dict, module: str) -> bool | None:
    """IA3: whether ``module`` is a feed-forward one (scaled on its input); None if unsaid."""
    ff = cfg.get("feedforward_modules")
    if ff is None:
        return None
    if isinstance(ff, str):
        return re.fullmatch(ff, module) is not None
    return any(module.endswith(t) for t in ff)
