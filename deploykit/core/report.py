"""Checks and reports: the library decides pass or fail, the CLI prints every report the same way.

``verify``, ``health`` and ``doctor`` each return a :class:`Report`. A report knows which error
class its failure is (``VerificationError`` for verify, ``HealthCheckError`` for health, ...),
so ``report.raise_if_failed()`` is the one way a failed report becomes an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploykit.core.errors import DeploykitError

PASS, FAIL, WARN, SKIP, INFO = "pass", "fail", "warn", "skip", "info"
#: ``info``: a measurement that is reported, never gated (it cannot fail).
STATUSES = (PASS, FAIL, WARN, SKIP, INFO)


@dataclass
class Check:
    """One check's outcome: ``pass``, ``fail``, ``warn``, ``skip`` or ``info`` (reported only),
    a line, and its data."""

    name: str
    status: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}")

    @classmethod
    def of(cls, name: str, ok: bool, detail: str = "", **data: Any) -> Check:
        """``pass`` when ``ok``, else ``fail``."""
        return cls(name, PASS if ok else FAIL, detail, dict(data))

    @property
    def ok(self) -> bool:
        return self.status != FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "ok": self.ok,
            "detail": self.detail,
            "data": self.data,
        }


@dataclass
class Report:
    """Checks about one subject, plus whatever else the command reports (``extra``).

    ``error`` is the class a failure raises; ``hint`` what the user should do about it.
    """

    what: str
    subject: str
    checks: list[Check] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    error: type[DeploykitError] = DeploykitError
    hint: str = "see the report above"

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``--json``, manifests): ``extra``, ``ok``, ``failed``, the checks."""
        return {
            **self.extra,
            "ok": self.ok,
            "failed": self.failed,
            "checks": [c.to_dict() for c in self.checks],
        }

    def failure(self) -> DeploykitError | None:
        """The error a failed report raises (None when every check passed)."""
        if self.ok:
            return None
        names = ", ".join(self.failed)
        return self.error(f"{self.subject} failed {len(self.failed)} check(s): {names}", self.hint)

    def raise_if_failed(self) -> None:
        if (err := self.failure()) is not None:
            raise err

    def lines(self) -> list[str]:
        """The human form: one line per check."""
        width = max((len(c.name) for c in self.checks), default=0)
        return [f"{c.status.upper():5} {c.name:{width}}  {c.detail}".rstrip() for c in self.checks]
