"""Tabular tasks: one input is one record ``{"feature": number | string | null}``.

The features (names, types, whether a value may be missing, the known
categories of a string feature) are the model's: its adapter reads them from
the fitted estimator or the manifest's ``features`` and sets ``features``
before the task is built. The task makes a strict pydantic model of one record
from them, so a missing, extra or mistyped feature is a 422 naming the item
and the feature (``inputs[0].petal width (cm)``), and the OpenAPI document
shows the model's own record.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from serving.errors import ValidationFailed, invalid
from tasks.base import Decoded, Limits, Task, canonical_json, schema_error
from tasks.classification import Classifies
from tasks.results import Classification, Regression
from tasks.tensors import BYTES, TensorSpec, one_per_row

NUMBER = "number"
STRING = "string"
#: The V2 tensor of all numeric features of a tabular model, [N, F] in feature order.
MATRIX = "features"
#: A numeric feature must fit in float32: XGBoost and LightGBM read float32, and
#: a larger value is infinite there (the model's answer is then no number).
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Feature:
    """One input column of a tabular model."""

    name: str
    kind: str = NUMBER  # NUMBER or STRING
    nullable: bool = False
    #: The values a string feature may take; ``None``: any string.
    categories: tuple[str, ...] | None = None


def _value_type(feature: Feature) -> Any:
    if feature.kind == STRING:
        base: Any = Literal[feature.categories] if feature.categories else str  # type: ignore[valid-type]
    else:  # strict float takes JSON integers too, never strings or booleans
        base = Annotated[float, Field(ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
    return Optional[base] if feature.nullable else base


def _describe(feature: Feature) -> str:
    what = "a number" if feature.kind == NUMBER else "a string"
    if feature.categories:
        what = "one of " + ", ".join(repr(c) for c in feature.categories[:20]) + (" ..." if len(feature.categories) > 20 else "")
    return what + ("; null when missing" if feature.nullable else "")


def _title(model_name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", model_name) if part) or "Model"


def record_model(model_name: str, features: list[Feature]) -> type[BaseModel]:
    """The strict pydantic model of one record of these features."""
    fields = {
        f"f{i}": (_value_type(feature), Field(alias=feature.name, description=_describe(feature)))
        for i, feature in enumerate(features)
    }
    return create_model(  # type: ignore[call-overload]
        f"{_title(model_name)}Record",
        __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, hide_input_in_errors=True),
        **fields,
    )


class TabularTask(Task):
    """One input is one record of the model's features."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        features: list[Feature] = list(getattr(model, "features", None) or [])
        if not features:
            raise ValueError(f"{model.name}: a tabular model needs its features (the adapter found none)")
        self.features = features
        self.item_type = record_model(model.name, features)
        self._fields = [f"f{i}" for i in range(len(features))]

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        try:
            record = self.item_type.model_validate(item)
        except ValidationError as error:
            raise schema_error(error, field, "record") from None
        values = tuple(getattr(record, name) for name in self._fields)
        return Decoded(values, canonical_json(values))

    def default_example(self) -> Any:
        return {
            f.name: (f.categories[0] if f.categories else "a") if f.kind == STRING else 0.0 for f in self.features
        }

    # Open Inference Protocol: one tensor [N, F] of the numeric features in
    # order, or one tensor [N] per feature named by it (strings as BYTES).

    def tensor_inputs(self) -> list[TensorSpec]:
        if all(f.kind == NUMBER for f in self.features):
            return [TensorSpec(MATRIX, "FP64", (-1, len(self.features)))]
        return [TensorSpec(f.name, "FP64" if f.kind == NUMBER else BYTES, (-1,)) for f in self.features]

    def items_from_tensors(self, tensors: dict[str, np.ndarray], field: str = "inputs") -> list[Any]:
        """Records from the tensors (NaN is a missing value); the records are
        then validated as any request's are."""
        names = [f.name for f in self.features]
        numeric = all(f.kind == NUMBER for f in self.features)
        if numeric and (MATRIX in tensors or len(tensors) == 1):
            matrix = self.expect_tensors(tensors, field, [MATRIX])[MATRIX]
            if matrix.ndim != 2 or matrix.shape[1] != len(names) or matrix.dtype.kind not in "fiu":
                raise invalid(f"{field}.{MATRIX}", f"expected a numeric tensor [N, {len(names)}], got {matrix.dtype} {list(matrix.shape)}")
            return [dict(zip(names, _values(row))) for row in matrix.astype(np.float64)]
        if numeric and not set(names) & set(tensors):
            raise invalid(
                field,
                f"model {self.model.name!r} takes the tensor {MATRIX!r} [N, {len(names)}] "
                f"or one tensor [N] per feature: {', '.join(names)}",
            )
        tensors = self.expect_tensors(tensors, field, names)
        columns = {}
        for feature in self.features:
            column = one_per_row(tensors[feature.name], f"{field}.{feature.name}")
            if column.dtype == np.object_:
                columns[feature.name] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in column.tolist()]
            elif column.dtype.kind in "fiu":
                columns[feature.name] = _values(column.astype(np.float64))
            else:
                raise invalid(f"{field}.{feature.name}", f"expected a number or BYTES tensor, got {column.dtype}")
        counts = {len(values) for values in columns.values()}
        if len(counts) != 1:
            raise invalid(field, "every feature tensor needs the same number of rows")
        return [dict(zip(names, row)) for row in zip(*columns.values())]


def _finite(values: Any, model: str) -> None:
    if not all(math.isfinite(v) for v in values):
        # Inputs far outside what the model was fitted on overflow some models.
        raise ValidationFailed(
            f"model {model!r} gave a non-finite output for an input; check the features' ranges",
            details=[{"field": "inputs", "message": "non-finite model output", "type": "value_error"}],
        )


class TabularClass(BaseModel):
    category: str
    scores: Optional[dict[str, float]] = Field(
        None, description="Probability of every label; absent when the model gives none."
    )


def _values(row: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else v for v in row.tolist()]


class TabularClassification(Classifies, TabularTask):
    """Record -> `{category, scores}` (`scores` where the model gives probabilities)."""

    name = "tabular-classification"
    Output = TabularClass

    def finish(self, result: Classification, decoded: Decoded, parameters: BaseModel) -> Classification:
        if result.scores is not None:
            _finite(result.scores.values(), self.model.name)
        return result


class RegressionOut(BaseModel):
    value: Optional[float] = Field(None, description="The prediction of a single-target model.")
    values: Optional[list[float]] = Field(None, description="One prediction per target of a multi-output model.")


class TabularRegression(TabularTask):
    """Record -> `{value}` (or `{values}` for a multi-output model)."""

    name = "tabular-regression"
    Output = RegressionOut

    def finish(self, result: Regression, decoded: Decoded, parameters: BaseModel) -> Regression:
        _finite(result.values if result.values is not None else (result.value,), self.model.name)
        return result

    def encode(self, result: Regression, decoded: Decoded, parameters: BaseModel) -> Any:
        # Unrounded: the answer is the estimator's own float.
        if result.values is not None:
            return {"values": list(result.values)}
        return {"value": result.value}

    def dump(self, result: Regression) -> Any:
        return {"value": result.value, "values": None if result.values is None else list(result.values)}

    def tensor_outputs(self) -> list[TensorSpec]:
        return [TensorSpec("value", "FP64", (-1,))]

    def tensors_from_results(self, results: list[Regression], decoded: list[Decoded], parameters: BaseModel) -> dict[str, np.ndarray]:
        """``value`` [N], or ``values`` [N, targets] for a multi-output model."""
        if results and results[0].values is not None:
            return {"values": np.array([r.values for r in results], dtype=np.float64)}
        return {"value": np.array([r.value for r in results], dtype=np.float64)}

    def load(self, value: Any) -> Regression:
        values = value.get("values")
        return Regression(value=value.get("value"), values=None if values is None else tuple(values))
