"""The plugin's part of the workspace: ``contracts:`` (plans by name) and ``sources.<name>.contract``.

``check`` runs when a document is applied: every plan is read and compiled, so a schema that is
not JSON Schema, a pattern RE2 does not compile or a source naming a plan that does not exist is
refused then, with its path (and line). ``build`` runs once per version in every process: what
it returns (compiled plans, one ``Enforcer`` per source) is in each source's
``pipeline.sections["contracts"]``, so no request compiles anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from signalsmith import WorkspaceDocument, WorkspaceProblem, WorkspaceSection
from signalsmith_contracts.compiled import CompiledPlan, PlanError, compile_plan, plan_digest
from signalsmith_contracts.enforce import Enforcer
from signalsmith_contracts.plans import PlanProblem, read_plan
from signalsmith_contracts.settings import ContractsSection, SourceContract

SECTION = "contracts"
SOURCE_FIELD = "contract"


class BuiltContracts:
    """One workspace version's contracts, compiled."""

    __slots__ = ("enforcers", "plans", "shadows")

    def __init__(
        self,
        plans: dict[str, CompiledPlan],
        enforcers: dict[str, Enforcer],
        shadows: dict[str, Enforcer],
    ) -> None:
        self.plans = plans
        self.enforcers = enforcers
        self.shadows = shadows


def compile_written(name: str, written: Any) -> CompiledPlan:
    """The plan written under ``contracts.<name>``, compiled; raises ``PlanError``."""
    try:
        read = read_plan(written, name=name)
    except PlanProblem as problem:
        raise PlanError(problem.path, problem.message) from None
    return compile_plan(name, read, plan_digest(read))


def _plans(document: WorkspaceDocument) -> dict[str, Any]:
    return document.sections.get(SECTION) or {}


def _contracts(document: WorkspaceDocument) -> Iterator[tuple[str, SourceContract]]:
    for name, source in document.sources.items():
        contract = source.fields.get(SOURCE_FIELD)
        if isinstance(contract, SourceContract):
            yield name, contract


def check(document: WorkspaceDocument) -> list[WorkspaceProblem]:
    problems: list[WorkspaceProblem] = []
    plans = _plans(document)
    for name, written in plans.items():
        try:
            compile_written(name, written)
        except PlanError as error:
            problems.append(
                WorkspaceProblem((SECTION, name, *error.path), f"plan {name!r}: {error.message}")
            )
    declared = ", ".join(sorted(plans)) or "none"
    for source, contract in _contracts(document):
        for field in ("plan", "shadow"):
            plan = getattr(contract, field)
            if plan is not None and plan not in plans:
                problems.append(
                    WorkspaceProblem(
                        ("sources", source, SOURCE_FIELD, field),
                        f"plan {plan!r} is not declared (declared: {declared}); add it under "
                        f"`{SECTION}:`",
                    )
                )
        if contract.shadow is not None and contract.shadow == contract.plan:
            problems.append(
                WorkspaceProblem(
                    ("sources", source, SOURCE_FIELD, "shadow"),
                    "the shadow plan is the enforced plan; name another plan (a new version) to "
                    "trial it",
                )
            )
    return problems


def build(document: WorkspaceDocument) -> BuiltContracts:
    plans = {name: compile_written(name, written) for name, written in _plans(document).items()}
    enforcers: dict[str, Enforcer] = {}
    shadows: dict[str, Enforcer] = {}
    for source, contract in _contracts(document):
        enforcers[source] = Enforcer(source, plans[contract.plan], contract)
        if contract.shadow is not None:
            shadows[source] = Enforcer(source, plans[contract.shadow], contract)
    return BuiltContracts(plans, enforcers, shadows)


def workspace_section() -> WorkspaceSection:
    return WorkspaceSection(
        name=SECTION,
        settings=ContractsSection,
        source_field=SOURCE_FIELD,
        source_settings=SourceContract,
        check=check,
        build=build,
        description="Tracking plans by name: Segment Public API rules, a Typewriter plan.json, "
        "a Config API plan or a RudderStack Data Catalog plan (see plugins/contracts).",
    )
