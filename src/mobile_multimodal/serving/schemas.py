"""Request and response bodies of the native HTTP API (DESIGN.md "HTTP"), as pydantic models.

They are the OpenAPI schema too, so they describe exactly what the routes accept and return.
Requests are strict (no silent ``"5"`` -> ``5`` coercion) and reject unknown fields: a typo in a
field name is an error the client sees, not an option silently ignored.

Example::

    InferenceRequest.model_validate({"image": "data:image/png;base64,...", "task": "captioning"})
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from mobile_multimodal.serving.error_handlers import ErrorCode

Task = Literal["captioning", "ocr", "vqa", "retrieval"]
TASKS: tuple[Task, ...] = ("captioning", "ocr", "vqa", "retrieval")

# Generation limits: the decoder's context is short, so a larger request is a client error.
MAX_TOKENS_LIMIT = 64
DEFAULT_MAX_TOKENS: dict[str, int] = {"captioning": 32, "ocr": 24, "vqa": 8}
MAX_TEXTS = 64
MAX_TEXT_CHARS = 256
MAX_QUESTION_CHARS = 512
# The text of a chat request's user turn. Tokens are what the model limits (the loaded model's
# max_question_tokens / max_text_tokens, checked in runner.check_prompt); characters bound the
# work of reading the text (task rule, token count) before that check.
MAX_PROMPT_CHARS = 2048


class InferenceRequest(BaseModel):
    """``POST /inference``: one image and one task."""

    model_config = ConfigDict(strict=True, extra="forbid")

    image: str = Field(
        min_length=1,
        description="The image: base64 (standard or URL-safe alphabet) or a data URI "
        "(data:image/png;base64,...). PNG, JPEG, WebP, BMP or GIF.",
    )
    task: Task = Field(description="captioning, ocr, vqa or retrieval.")
    question: str | None = Field(
        None, min_length=1, max_length=MAX_QUESTION_CHARS, description="Required for vqa."
    )
    texts: list[str] | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXTS,
        description="retrieval only: candidate texts to score against the image. Without them, "
        "retrieval returns the image embedding.",
    )
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS_LIMIT, description="Most tokens to generate (captioning, ocr, vqa)."
    )

    @model_validator(mode="after")
    def _task_fields(self) -> InferenceRequest:
        if self.task == "vqa" and not self.question:
            raise PydanticCustomError(
                ErrorCode.MISSING_QUESTION.lower(), "task 'vqa' needs a non-empty 'question'"
            )
        if self.texts is not None:
            if self.task != "retrieval":
                raise PydanticCustomError(
                    ErrorCode.INVALID_TEXTS.lower(), "'texts' is only used by task 'retrieval'"
                )
            for i, text in enumerate(self.texts):
                if not text.strip() or len(text) > MAX_TEXT_CHARS:
                    raise PydanticCustomError(
                        ErrorCode.INVALID_TEXTS.lower(),
                        f"texts[{i}] must be 1..{MAX_TEXT_CHARS} non-blank characters",
                    )
        return self

    def tokens(self) -> int:
        """The generation budget: the request's, else the task's default."""
        return self.max_tokens if self.max_tokens is not None else DEFAULT_MAX_TOKENS.get(self.task, 0)


_CONFIDENCE = "The model's confidence in this output, 0..1, no labels needed: {}."
_TOKEN_CONFIDENCE = _CONFIDENCE.format("geometric mean of the greedy tokens' probabilities")
_CTC_CONFIDENCE = _CONFIDENCE.format("CTC best-path probability per frame (geometric mean)")
_MARGIN_CONFIDENCE = _CONFIDENCE.format("best minus runner-up score (the score with one text)")


class SceneDomain(BaseModel):
    """Present when the model has a calibrated out-of-domain check (serving/domain_flags.py)."""

    out_of_domain: bool | None = Field(
        None,
        description="True when the image is not a scene of shapes the model knows (a natural photograph, "
        "an empty image): the output is a guess, not a reading. Either signal under its threshold flags "
        "it, and an image of one flat colour is flagged whatever they say. Absent when the model has "
        "no check.",
    )
    domain_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="The model's confidence in the start of the image's caption; flagged when under the "
        "model's calibrated threshold.",
    )
    domain_agreement: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="Cosine between the image's embedding and its own caption's; flagged when under the "
        "model's calibrated agreement threshold. Absent when the model checks confidence alone.",
    )


class CaptionResult(SceneDomain):
    caption: str
    confidence: float | None = Field(None, ge=0, le=1, description=_TOKEN_CONFIDENCE)


class TextResult(BaseModel):
    text: str
    confidence: float | None = Field(None, ge=0, le=1, description=_CTC_CONFIDENCE)


class AnswerResult(SceneDomain):
    answer: str
    confidence: float | None = Field(None, ge=0, le=1, description=_TOKEN_CONFIDENCE)


class EmbeddingResult(SceneDomain):
    embedding: list[float] = Field(description="L2-normalised image embedding.")


class RetrievalResult(SceneDomain):
    scores: list[float] = Field(description="Cosine similarity of the image with each text, in order.")
    best: str = Field(description="The text that matches the image best.")
    best_index: int = Field(ge=0, description="Index of `best` in `texts`.")
    confidence: float | None = Field(None, ge=0, le=1, description=_MARGIN_CONFIDENCE)


class ModelRef(BaseModel):
    name: str
    version: str
    quantization: str


class InferenceResponse(BaseModel):
    task: Task
    result: CaptionResult | TextResult | AnswerResult | RetrievalResult | EmbeddingResult
    model: ModelRef
    latency_ms: float = Field(description="Server-side time for this request, milliseconds.")
    trace_id: str


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: ErrorDetail
    trace_id: str | None = Field(description="32 hex digits; null from /metrics, which is never traced.")


# --- health ---------------------------------------------------------------------------------
CheckStatus = Literal["healthy", "unhealthy"]


class HealthChecks(BaseModel):
    database: CheckStatus
    model: CheckStatus
    memory: CheckStatus
    disk: CheckStatus


class HealthError(BaseModel):
    component: str
    message: str
    code: str


class HealthResponse(BaseModel):
    """``GET /health``: the guide's JSON. HTTP 503 when ``status`` is ``unhealthy``."""

    status: CheckStatus
    timestamp: str = Field(description="ISO 8601, UTC.")
    version: str
    uptime_seconds: float
    checks: HealthChecks
    errors: list[HealthError] = Field(default_factory=list)
    details: dict[str, float | str | None] = Field(
        default_factory=dict, description="The measured values behind the checks."
    )


class AliveResponse(BaseModel):
    status: Literal["alive"]
    uptime_seconds: float


class ReadyResponse(BaseModel):
    """``GET /ready``: 200 once the model is loaded and warmed up, else 503."""

    status: Literal["ready", "not_ready", "shutting_down"]
    model_loaded: bool
    warmed_up: bool
    reason: str | None = None


class ProbeResult(BaseModel):
    task: Task
    expected: str
    answer: str
    correct: bool
    latency_ms: float


class IntegrityReport(BaseModel):
    """The model files against their manifest, as ``/health``'s model check sees them."""

    status: Literal["healthy", "unhealthy", "unchecked"] = Field(
        description="unchecked: no check has finished yet, or the model has no manifest."
    )
    signature_verified: bool = Field(
        description="The loaded manifest's HMAC signature was verified (MOBILE_MM_MANIFEST_SIGNING_KEY set)."
    )
    last_check: str | None = Field(None, description="When the files were last re-hashed (ISO 8601, UTC).")
    message: str | None = None


class ModelHealthResponse(BaseModel):
    """``GET|POST /model/health``: a real probe inference through the loaded model, and the
    integrity of its files (unhealthy, 503, when they differ from the manifest, as ``/health``)."""

    status: CheckStatus
    model: ModelRef | None
    probe: ProbeResult | None
    error: ErrorDetail | None = None
    checked_at: str
    integrity: IntegrityReport | None = None
