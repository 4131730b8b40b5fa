"""Tasks whose input is text: classification, embedding, token classification
(named entities) and extractive question answering."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, Field, ValidationError, WithJsonSchema

from serving.errors import invalid
from tasks.base import Decoded, Limits, Strict, Task, canonical_json, schema_error
from tasks.classification import Classifies
from tasks.results import Answer, Entity
from tasks.tensors import BYTES, TensorSpec, texts, utf8

EXAMPLE_TEXT = "a warm, funny, beautifully acted film"
#: What ``check_text`` takes, as a JSON schema: a string with a character that
#: is not white space (at most ``SERVE_MAX_TEXT_CHARS``, 20,000 by default).
TEXT_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "pattern": r"\S",
    "description": "A text, with at least one character that is not white space.",
}
Text = Annotated[str, WithJsonSchema(TEXT_SCHEMA)]


def check_text(item: Any, limits: Limits, field: str) -> str:
    """A non-blank string within the length limit."""
    if not isinstance(item, str):
        raise invalid(field, "Input should be a valid string", "string_type")
    if not item.strip():
        raise invalid(field, "text is empty")
    if len(item) > limits.max_text_chars:
        raise invalid(field, f"text is longer than {limits.max_text_chars} characters")
    return item


class TextTask(Task):
    """One input is one non-blank text of at most ``SERVE_MAX_TEXT_CHARS`` characters."""

    item_type = Text

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        text = check_text(item, limits, field)
        return Decoded(text, text)

    def default_example(self) -> Any:
        return EXAMPLE_TEXT

    def tensor_inputs(self) -> list[TensorSpec]:
        return [TensorSpec("text", BYTES, (-1,))]

    def items_from_tensors(self, tensors: dict[str, np.ndarray], field: str = "inputs") -> list[Any]:
        return texts(self.expect_tensors(tensors, field)["text"], f"{field}.text")

    def item_from_line(self, value: Any, field: str) -> Any:
        # {"text": ...} lines, as earlier upload files wrote them.
        if isinstance(value, dict) and set(value) == {"text"}:
            return value["text"]
        return value


class TextClassification(Classifies, TextTask):
    """Text -> `{category, scores}`."""

    name = "text-classification"


class Embedding(BaseModel):
    embedding: list[float] = Field(description="The text's vector (unit length where the model normalises).")


class TextEmbedding(TextTask):
    """Text -> `{embedding}`."""

    name = "text-embedding"
    Output = Embedding

    def encode(self, result: list[float], decoded: Decoded, parameters: BaseModel) -> Any:
        return {"embedding": [round(x, 6) for x in result]}

    def dump(self, result: Any) -> Any:
        return [float(x) for x in result]

    def tensor_outputs(self) -> list[TensorSpec]:
        return [TensorSpec("embedding", "FP32", (-1, getattr(self.model, "dim", 0) or -1))]

    def tensors_from_results(self, results: list[Any], decoded: list[Decoded], parameters: BaseModel) -> dict[str, np.ndarray]:
        return {"embedding": np.array(results, dtype=np.float32).reshape(len(results), -1)}


class EntityOut(BaseModel):
    label: str = Field(description="The entity type (PER, LOC ...), or the tag of one token.")
    score: float
    start: int = Field(description="Offset of the first character in the text.")
    end: int = Field(description="Offset after the last character.")
    text: str = Field(description="text[start:end].")


class Entities(BaseModel):
    entities: list[EntityOut]


class TokenClassification(TextTask):
    """Text -> the labelled spans (named entities) with character offsets."""

    name = "token-classification"
    Output = Entities

    def encode(self, result: list[Entity], decoded: Decoded, parameters: BaseModel) -> Any:
        return {
            "entities": [
                {"label": e.label, "score": round(float(e.score), 6), "start": e.start, "end": e.end, "text": e.text}
                for e in result
            ]
        }

    def dump(self, result: list[Entity]) -> Any:
        return [asdict(e) for e in result]

    def load(self, value: Any) -> list[Entity]:
        return [Entity(**e) for e in value]

    def tensor_outputs(self) -> list[TensorSpec]:
        return [TensorSpec("entities", BYTES, (-1,))]

    def tensors_from_results(self, results: list[list[Entity]], decoded: list[Decoded], parameters: BaseModel) -> dict[str, np.ndarray]:
        """``entities``: per text, the JSON list of its entities (their number varies)."""
        return {"entities": utf8([orjson.dumps(self.encode(r, d, parameters)["entities"]).decode() for r, d in zip(results, decoded)])}


class Question(Strict):
    """A question about a context; the answer is a span of the context."""

    question: str = Field(min_length=1, description="The question.")
    context: str = Field(min_length=1, description="The text that holds the answer.")


class AnswerOut(BaseModel):
    answer: str = Field(description="context[start:end].")
    score: float
    start: int
    end: int


class QuestionAnswering(Task):
    """`{question, context}` -> `{answer, score, start, end}` (extractive)."""

    name = "question-answering"
    item_type = Question
    Output = AnswerOut

    def decode(self, item: Any, parameters: BaseModel, limits: Limits, field: str) -> Decoded:
        try:
            question = Question.model_validate(item)
        except ValidationError as error:
            raise schema_error(error, field) from None
        check_text(question.question, limits, f"{field}.question")
        check_text(question.context, limits, f"{field}.context")
        return Decoded(question, canonical_json([question.question, question.context]))

    def default_example(self) -> Any:
        return {"question": "Where does Ann live?", "context": "Ann lives in Berlin and works in Potsdam."}

    def encode(self, result: Answer, decoded: Decoded, parameters: BaseModel) -> Any:
        return {"answer": result.answer, "score": round(float(result.score), 6), "start": result.start, "end": result.end}

    def dump(self, result: Answer) -> Any:
        return asdict(result)

    def load(self, value: Any) -> Answer:
        return Answer(**value)

    def tensor_inputs(self) -> list[TensorSpec]:
        return [TensorSpec("question", BYTES, (-1,)), TensorSpec("context", BYTES, (-1,))]

    def items_from_tensors(self, tensors: dict[str, np.ndarray], field: str = "inputs") -> list[Any]:
        given = self.expect_tensors(tensors, field)
        questions, contexts = texts(given["question"], f"{field}.question"), texts(given["context"], f"{field}.context")
        if len(questions) != len(contexts):
            raise invalid(field, f"{len(questions)} questions for {len(contexts)} contexts")
        return [{"question": q, "context": c} for q, c in zip(questions, contexts)]

    def tensor_outputs(self) -> list[TensorSpec]:
        return [
            TensorSpec("answer", BYTES, (-1,)),
            TensorSpec("score", "FP32", (-1,)),
            TensorSpec("start", "INT64", (-1,)),
            TensorSpec("end", "INT64", (-1,)),
        ]

    def tensors_from_results(self, results: list[Answer], decoded: list[Decoded], parameters: BaseModel) -> dict[str, np.ndarray]:
        return {
            "answer": utf8([r.answer for r in results]),
            "score": np.array([r.score for r in results], dtype=np.float32),
            "start": np.array([r.start for r in results], dtype=np.int64),
            "end": np.array([r.end for r in results], dtype=np.int64),
        }
