"""What the in-flight scheduler tells the outside world: responses for each request, and metric events.

Responses (to a request's sink, in order; Final or Failure is the last):
  Token    streaming only: one or more new tokens and the text they complete
  Final    the request succeeded
  Failure  the request did not complete (code UNAVAILABLE, CANCELLED or INTERNAL)

Metric events (to the observer, from the scheduler's metrics thread, never from the engine thread):
  Occupancy, StepRows, FirstToken, Completed, Failed, EngineDied
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union


@dataclass(frozen=True)
class Token:
    ids: list[int]
    text: str  # may be "" while a character is incomplete or could begin a stop word


@dataclass(frozen=True)
class Final:
    """stream=False: every output id and the whole text (prompt first unless exclude_input_in_output).
    stream=True: the ids and text not streamed yet (often none), so that the responses together carry every
    token exactly once."""

    ids: list[int]
    text: str
    num_input_tokens: int
    num_output_tokens: int
    finish_reason: str  # "length", "end_id" or "stop_word"


@dataclass(frozen=True)
class Failure:
    code: str  # UNAVAILABLE, CANCELLED or INTERNAL
    message: str


Response = Union[Token, Final, Failure]


class Sink(Protocol):
    """One request's response channel (a Triton response sender, or a test's recorder)."""

    def deliver(self, response: Response) -> None: ...
    def is_cancelled(self) -> bool: ...


@dataclass(frozen=True)
class Occupancy:
    running: int  # sequences holding a slot
    waiting: int  # requests waiting for one
    slots: int


@dataclass(frozen=True)
class StepRows:
    rows: int  # sequences advanced by one decode step


@dataclass(frozen=True)
class FirstToken:
    seconds: float  # submit -> first token sampled


@dataclass(frozen=True)
class Completed:
    num_input_tokens: int
    num_output_tokens: int
    seconds: float  # submit -> last token
    per_output_token: float | None  # seconds per token after the first


@dataclass(frozen=True)
class Failed:
    code: str


@dataclass(frozen=True)
class EngineDied:
    reason: str


MetricEvent = Union[Occupancy, StepRows, FirstToken, Completed, Failed, EngineDied]


class Observer(Protocol):
    def observe(self, event: MetricEvent) -> None: ...
