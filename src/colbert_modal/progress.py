"""Progress where people wait: bars in a terminal or Jupyter, one log line per stage.

An operation (``index``, a remote apply) runs as named stages, each counted
in its own unit (files, chunks, passages); a stage that cannot count shows a
spinner with the elapsed time. :class:`Progress` draws them:

- in a terminal (stderr is a TTY) as tqdm's text bars;
- in a Jupyter kernel as tqdm's notebook widget, or its text bar where
  ipywidgets is missing;
- nowhere when output is piped or ``$CI`` is set;
- ``progress=True/False`` overrides the choice (see :func:`should_show`).

Whether bars show or not, each finished stage logs one INFO line on the
``colbert_modal.progress`` logger, never more.

Stages also travel as small frozen records (:data:`Event`: started,
advanced, noted, ended): a Modal container reports its stages through a sink
(:class:`Progress` ``(sink=...)``) and the client replays them with
:meth:`Progress.replay`, so remote work shows the same bars as local work.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "Event",
    "Progress",
    "Stage",
    "StageAdvanced",
    "StageEnded",
    "StageNoted",
    "StageStarted",
    "bar_kind",
    "in_notebook",
    "should_show",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageStarted:
    """Stage ``stage`` began, counting ``total`` (None: a spinner) ``unit`` s."""

    stage: str
    total: int | None
    unit: str


@dataclass(frozen=True)
class StageAdvanced:
    """Stage ``stage`` counted ``n`` more."""

    stage: str
    n: int


@dataclass(frozen=True)
class StageNoted:
    """Stage ``stage`` shows ``text`` beside its bar."""

    stage: str
    text: str


@dataclass(frozen=True)
class StageEnded:
    """Stage ``stage`` finished."""

    stage: str


#: A stage's life as plain data (it pickles): what a sink receives and :meth:`Progress.replay` applies.
Event = StageStarted | StageAdvanced | StageNoted | StageEnded

#: Seconds between redraws of a spinner (a stage that cannot count).
SPIN_INTERVAL = 0.5


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython's ZMQ shell), where stderr is never a TTY."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        get_ipython = getattr(sys.modules.get("builtins"), "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:  # pragma: no cover - a broken shell is no notebook
        return False
    if shell is None:
        return False
    if type(shell).__name__ == "ZMQInteractiveShell":
        return True
    try:
        return "IPKernelApp" in shell.config
    except Exception:  # pragma: no cover
        return False


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def should_show(progress: bool | None = None, stream: TextIO | None = None) -> bool:
    """Whether bars show: ``progress`` if given, else never in CI, in Jupyter, or where ``stream`` is a TTY.

    ``stream`` defaults to ``sys.stderr`` (where the bars go).
    """
    if progress is not None:
        return bool(progress)
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    if in_notebook():
        return True
    return _is_tty(sys.stderr if stream is None else stream)


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def bar_kind(progress: bool | None = None, stream: TextIO | None = None) -> str | None:
    """``"notebook"`` (tqdm's widget), ``"text"`` (tqdm's text bar) or None (no bars)."""
    if not should_show(progress, stream):
        return None
    return "notebook" if in_notebook() and _has_widgets() else "text"


class Stage:
    """One stage of an operation: counts in ``unit`` towards ``total`` (None: a spinner)."""

    def __init__(self, owner: Progress, name: str, total: int | None, unit: str) -> None:
        self.owner = owner
        self.name = name
        self.total = total
        self.unit = unit
        self.n = 0
        self.note_text = ""
        self.started = time.perf_counter()
        self.closed = False
        self._bar: Any = None
        self._spinner: threading.Thread | None = None
        self._stop = threading.Event()
        if owner.kind is not None:
            self._bar = owner.new_bar(name, total, unit)
            if total is None:
                self._spinner = threading.Thread(target=self._spin, name=f"progress-{name}", daemon=True)
                self._spinner.start()
        owner.emit(StageStarted(name, total, unit))

    def _spin(self) -> None:
        while not self._stop.wait(SPIN_INTERVAL):
            with contextlib.suppress(Exception):
                self._bar.refresh()

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        if self.closed or n <= 0:
            return
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        self.owner.emit(StageAdvanced(self.name, n))

    def note(self, text: str) -> None:
        """A short remark shown after the bar (e.g. ``"112 chunks"``) and in the log line."""
        self.note_text = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)
        self.owner.emit(StageNoted(self.name, text))

    def close(self) -> None:
        """End the stage: close its bar, log its one INFO line."""
        if self.closed:
            return
        self.closed = True
        self._stop.set()
        if self._spinner is not None:
            self._spinner.join(timeout=2 * SPIN_INTERVAL)
        if self._bar is not None:
            self._bar.close()
        seconds = time.perf_counter() - self.started
        counted = f"{self.n} {self.unit}{'' if self.n == 1 else 's'}" if self.n or self.total else ""
        detail = ", ".join(part for part in (counted, self.note_text) if part)
        if self.owner.log:
            logger.info("%s: %s%s%.1f s", self.name, detail, " in " if detail else "", seconds)
        self.owner.emit(StageEnded(self.name))
        self.owner.finished(self)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """The stages of one operation, shown as bars (or not) and logged once each.

    ``show``: as :func:`should_show` takes it (None decides from the
    environment). ``sink``: called with every :data:`Event` (how a container
    streams its stages to the client). ``log=False``: no log lines (the
    container's side of a stream; the client logs what it replays).
    """

    def __init__(
        self, show: bool | None = False, *, sink: Callable[[Event], None] | None = None, log: bool = True
    ) -> None:
        self.kind = bar_kind(show)
        self.sink = sink
        self.log = log
        self.stages: dict[str, Stage] = {}
        #: Names of the stages in the order they ended (for tests and reports).
        self.done: list[str] = []

    def __repr__(self) -> str:
        return f"Progress(kind={self.kind!r}, stages={list(self.stages)})"

    @property
    def watched(self) -> bool:
        """True where someone sees the stages: bars show, or stage lines are logged at INFO."""
        return self.kind is not None or (self.log and logger.isEnabledFor(logging.INFO))

    def new_bar(self, name: str, total: int | None, unit: str) -> Any:
        """A tqdm bar of this progress's kind."""
        if self.kind == "notebook":
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm(total=total, desc=name, unit=unit, leave=True)
        from tqdm.std import tqdm as text_tqdm

        return text_tqdm(total=total, desc=name, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True)

    def stage(self, name: str, *, total: int | None = None, unit: str = "file") -> Stage:
        """Start stage ``name`` (a context manager; close it to end the stage)."""
        old = self.stages.get(name)
        if old is not None:
            old.close()
        stage = Stage(self, name, total, unit)
        self.stages[name] = stage
        return stage

    def count(self, items: Iterable[Any], stage: Stage, *, counts: Callable[[Any], bool] | None = None) -> Iterator[Any]:
        """Yield ``items``, advancing ``stage`` by one per item (where ``counts(item)``); closes it at the end."""
        try:
            for item in items:
                if counts is None or counts(item):
                    stage.update(1)
                yield item
        finally:
            stage.close()

    def emit(self, event: Event) -> None:
        if self.sink is not None:
            self.sink(event)

    def finished(self, stage: Stage) -> None:
        self.done.append(stage.name)
        if self.stages.get(stage.name) is stage:
            del self.stages[stage.name]

    def replay(self, event: Event) -> None:
        """Apply an :data:`Event` that another process emitted (a Modal container's stage)."""
        if isinstance(event, StageStarted):
            self.stage(event.stage, total=event.total, unit=event.unit)
            return
        stage = self.stages.get(event.stage)
        if stage is None:
            return
        if isinstance(event, StageAdvanced):
            stage.update(event.n)
        elif isinstance(event, StageNoted):
            stage.note(event.text)
        elif isinstance(event, StageEnded):
            stage.close()

    def close(self) -> None:
        """End every stage still open (after an error)."""
        for stage in list(self.stages.values()):
            stage.close()
