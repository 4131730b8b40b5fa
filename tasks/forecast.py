"""Time-series forecasting: one input names a series (a site) and a horizon;
the answer is one value per future step with its time, and the prediction
interval where the model gives one.

The series a model knows and its longest horizon are the model's (its adapter
sets ``series`` and ``max_horizon``): an unknown series or a horizon past the
longest is a 422 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, Field, ValidationError, WithJsonSchema

from serving.errors import invalid
from tasks.base import Decoded, Integer, Limits, Strict, Task, canonical_json, schema_error
from tasks.results import Forecast


class ForecastRequest(Strict):
    series: str = Field(min_length=1, max_length=128, description="The series (site) to forecast.")
    horizon: Integer = Field(ge=1, description="How many steps (days) ahead.")


class ForecastStep(BaseModel):
    time: str = Field(description="The step's date (ISO 8601).")
    value: float
    lower: Optional[float] = Field(None, description="Low end of the prediction interval, where the model gives one.")
    upper: Optional[float] = None


class ForecastOut(BaseModel):
    series: str
    forecast: list[ForecastStep]


class TimeSeriesForecast(Task):
    """`{series, horizon}` -> `{series, forecast: [{time, value, lower, upper}]}`."""

    name = "time-series-forecast"
    Output = ForecastOut

    @property
    def item_type(self) -> Any:  # type: ignore[override]
        """The request, its schema naming this model's series and longest horizon."""
        schema = ForecastRequest.model_json_schema()
        known = list(getattr(self.model, "series", ()))
        if known:
            schema["properties"]["series"]["enum"] = known
        longest = getattr(self.model, "max_horizon", None)
        if longest:
            schema["properties"]["horizon"]["maximum"] = longest
        return Annotated[ForecastRequest, WithJsonSchema(schema)]

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        try:
            request = ForecastRequest.model_validate(item)
        except ValidationError as error:
            raise schema_error(error, field) from None
        known = list(getattr(self.model, "series", ()))
        if request.series not in known:
            shown = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
            raise invalid(f"{field}.series", f"unknown series {request.series!r}; this model forecasts {shown}")
        longest = getattr(self.model, "max_horizon", None)
        if longest is not None and request.horizon > longest:
            raise invalid(f"{field}.horizon", f"at most {longest} steps ahead, got {request.horizon}")
        return Decoded(request, canonical_json([request.series, request.horizon]))

    def default_example(self) -> Any:
        known = list(getattr(self.model, "series", ())) or ["site"]
        return {"series": known[0], "horizon": min(7, getattr(self.model, "max_horizon", None) or 7)}

    def encode(self, result: Forecast, decoded: Decoded, parameters: BaseModel) -> Any:
        steps = []
        for i, (time, value) in enumerate(zip(result.times, result.values)):
            step: dict[str, Any] = {"time": time, "value": round(float(value), 6)}
            if result.lower is not None and result.upper is not None:
                step["lower"], step["upper"] = round(float(result.lower[i]), 6), round(float(result.upper[i]), 6)
            steps.append(step)
        return {"series": result.series, "forecast": steps}

    def dump(self, result: Forecast) -> Any:
        return {"series": result.series, "times": list(result.times), "values": list(result.values),
                "lower": None if result.lower is None else list(result.lower),
                "upper": None if result.upper is None else list(result.upper)}

    def load(self, value: Any) -> Forecast:
        def tup(v):
            return None if v is None else tuple(v)

        return Forecast(value["series"], tuple(value["times"]), tuple(value["values"]), tup(value["lower"]), tup(value["upper"]))
