"""The task of an ensemble: its members' task, with the answer marked.

An ensemble (``adapters/ensemble.py``) serves the task its manifest names
(``text-classification``, ``tabular-regression`` ...): its inputs are that
task's, decoded and checked by it, and its answer is that task's answer
combined over the members, plus ``partial`` (a member failed or timed out
and was skipped) and ``failed`` (which). With ``combine: concat`` the answer
is each member's own under ``answers``. A partial answer is never cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, Field, create_model

from tasks.base import Decoded, Limits, Task


@dataclass(frozen=True, slots=True)
class MemberInput:
    """One input as an ensemble hands it to its members: the wire value (for
    remote members), the inner task's decoded input (for local ones) and the
    request's parameters."""

    raw: Any
    decoded: Decoded
    parameters: BaseModel


class EnsembleTask(Task):
    """The inner task's inputs and parameters; its combined output plus ``partial`` and ``failed``."""

    def __init__(self, inner: Task, concat: bool) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # an ensemble answers where its members' task does
        self.item_type = inner.item_type
        self.Parameters = inner.Parameters  # type: ignore[misc]
        self.takes_files = inner.takes_files  # type: ignore[misc]
        self.Output = _output_model(inner, concat)
        super().__init__(inner.model)

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        decoded = self.inner.decode(item, parameters, limits, field)
        return Decoded(MemberInput(item, decoded, parameters), decoded.key)

    def check(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> None:
        self.inner.check(item, parameters, limits, field)

    def default_example(self) -> Any:
        return self.inner.default_example()

    def encode(self, result: Any, decoded: Decoded, parameters: BaseModel) -> Any:
        return result  # combined as JSON already (adapters/ensemble.py)

    def cacheable(self, result: Any) -> bool:
        return not result.get("partial")

    def tensor_inputs(self):
        return self.inner.tensor_inputs()

    def items_from_tensors(self, tensors, field: str = "inputs") -> list[Any]:
        return self.inner.items_from_tensors(tensors, field)

    def item_from_file(self, data: bytes, field: str) -> Any:
        return self.inner.item_from_file(data, field)

    def item_from_line(self, value: Any, field: str) -> Any:
        return self.inner.item_from_line(value, field)


def _output_model(inner: Task, concat: bool) -> Any:
    marks = {
        "partial": (bool, Field(description="A member failed or timed out and was left out (on_failure: skip).")),
        "failed": (list[str], Field(description="The members left out.")),
    }
    name = f"Ensemble{getattr(inner.Output, '__name__', 'Output')}"
    if concat:
        return create_model(name, answers=(dict[str, Any], Field(description="Each member's own answer, by member.")), **marks)
    if isinstance(inner.Output, type) and issubclass(inner.Output, BaseModel):
        return create_model(name, __base__=inner.Output, **marks)
    return create_model(name, value=(Optional[Any], None), **marks)
