"""Modal's image-build log, summarised on the "connecting to Modal" stage while the app run starts.

A first ephemeral run builds the images (minutes). The modal client streams
each build's log to its current output manager
(``modal.output.OutputManager.get().put_streaming_log``), whether output is
enabled or not; ``modal.enable_output()`` (``verbose=True``) installs one that
prints it all. While the app run starts without ``verbose``,
:func:`watching` installs a quiet one instead: Modal's disabled manager,
which prints nothing, with ``put_streaming_log`` kept. Its :class:`BuildLog`
reads the lines Modal's server writes::

    Building image im-...
    => Step 3: RUN apt-get install -y git build-essential
    Saving image...
    Built image im-... in 84.2s

and notes on the stage, in place, which image is building (the GPU image or
the client image, told apart by their steps), its current step, and what was
built. Notes never log: the stage's one INFO line carries the last of them.
Each build's last lines are kept, so a failed build becomes our
:class:`~colbert_modal.errors.RemoteError` naming the image, its step and the
log's tail (:func:`build_error`).

Where the hook is missing (another modal version), nothing is installed and
the stage keeps its plain note (``BuildLog.hooked`` is False). modal is
imported inside functions only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import RemoteError
from ..progress import Stage

__all__ = ["Build", "BuildLog", "build_error", "hook_missing", "watching"]

logger = logging.getLogger(__name__)

#: Lines of each build kept for an error message.
LAST_LINES = 8
#: The label of a build whose steps name neither image.
UNKNOWN = "image"
#: Longest note shown after the bar.
NOTE_CHARS = 96

_BUILDING = re.compile(r"Building image (im-\w+)")
_STEP = re.compile(r"=> Step (\d+(?:/\d+)?): (.*)")
_BUILT = re.compile(r"Built image (im-\w+) in ([\d.]+)\s*s")


@dataclass
class Build:
    """One image build as its log tells it."""

    image_id: str = ""
    label: str = UNKNOWN
    step: str = ""
    seconds: float | None = None
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LAST_LINES))

    @property
    def name(self) -> str:
        return f"{self.label} {self.image_id}".strip()


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


def _short(text: str, limit: int = NOTE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BuildLog:
    """The image builds of one app start, read from Modal's log chunks; notes them on ``stage``.

    ``labels``: ``(label, markers)`` pairs; a build whose step lines contain
    one of a label's markers is that label's (e.g. ``"GPU image"``).
    Chunks arrive from the modal client's event loop, keyed by the build
    they belong to (concurrent builds interleave).
    """

    def __init__(self, stage: Stage | None = None, labels: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
        self.stage = stage
        self.labels = list(labels)
        self.hooked = False
        self.builds: list[Build] = []
        self._current: dict[Any, Build] = {}
        self._partial: dict[Any, str] = {}
        self._lock = threading.Lock()

    def feed(self, key: Any, data: str) -> None:
        """A chunk of build ``key``'s log (lines may be cut anywhere)."""
        with self._lock:
            text = self._partial.pop(key, "") + data.replace("\r", "\n")
            *lines, rest = text.split("\n")
            if rest:
                self._partial[key] = rest
            for line in lines:
                self._line(key, line.strip())

    def flush(self, key: Any = None) -> None:
        """Build ``key``'s stream ended (None: every stream): its unfinished line counts too."""
        with self._lock:
            for k in list(self._partial) if key is None else [key]:
                rest = self._partial.pop(k, "")
                if rest:
                    self._line(k, rest.strip())

    def _line(self, key: Any, line: str) -> None:
        if not line:
            return
        build = self._current.get(key)
        started = _BUILDING.search(line)
        if build is None or (started and started.group(1) != build.image_id and build.image_id):
            build = self._current[key] = Build()
            self.builds.append(build)
        build.lines.append(line)
        if started:
            build.image_id = started.group(1)
            self._note(f"building {build.name}")
        elif step := _STEP.match(line):
            build.step = f"{step.group(1)}: {step.group(2)}"
            self._classify(build, step.group(2))
            self._note(f"{build.name}, step {build.step}")
        elif line.startswith("Saving image"):
            self._note(f"{build.name}: saving")
        elif done := _BUILT.search(line):
            build.image_id = build.image_id or done.group(1)
            build.seconds = float(done.group(2))
            self._note(f"built {build.name} in {_seconds(build.seconds)}")

    def _classify(self, build: Build, command: str) -> None:
        if build.label != UNKNOWN:
            return
        for label, markers in self.labels:
            if any(m in command for m in markers):
                build.label = label
                return

    def _note(self, text: str) -> None:
        if self.stage is not None:
            try:
                self.stage.note(_short(text))
            except Exception:  # pragma: no cover - a display problem must not break Modal's build
                logger.debug("could not show the image build note", exc_info=True)

    def summary(self) -> str:
        """What was built, in a few words (the stage's last note)."""
        with self._lock:
            done = [b for b in self.builds if b.seconds is not None]
        # a layer two images share (the slim base) is one build whose log may stream to each: count it once
        built = list({b.image_id or str(i): b for i, b in enumerate(done)}.values())
        if not built:
            return "images already built"
        counts = Counter(b.label for b in built)
        parts = ", ".join(f"{'other' if label == UNKNOWN else label} {n}" for label, n in counts.most_common())
        return f"built {len(built)} image layer{'s' if len(built) != 1 else ''} ({parts})"

    def find(self, image_id: str | None) -> Build | None:
        """The build of ``image_id``, else the last one that did not finish."""
        with self._lock:
            builds = list(self.builds)
        for build in reversed(builds):
            if image_id and build.image_id == image_id:
                return build
        unfinished = [b for b in builds if b.seconds is None]
        return unfinished[-1] if unfinished else None


def hook_missing() -> str | None:
    """Why the build log cannot be read with this modal client (None: it can)."""
    try:
        from modal._output.manager import DisabledOutputManager
        from modal.output import OutputManager
    except ImportError as exc:
        return f"modal's output manager is gone ({exc})"
    for name in ("get", "_set", "put_streaming_log", "flush_lines"):
        if not hasattr(OutputManager, name):
            return f"modal.output.OutputManager has no {name}"
    if not issubclass(DisabledOutputManager, OutputManager):
        return "modal's DisabledOutputManager is no OutputManager"
    return _build_skips_hook()


def _build_skips_hook() -> str | None:
    """Why modal's image build would not reach the hook: its code no longer hands the log to the current
    output manager (``OutputManager.get()``, ``put_streaming_log``, ``flush_lines``). Names that exist
    but go uncalled would leave the stage silent; None where the build's source cannot be read."""
    import inspect

    try:
        from modal import _image

        source = inspect.getsource(_image)
    except (ImportError, OSError, TypeError):
        return None
    for call in ("OutputManager.get()", ".put_streaming_log(", ".flush_lines("):
        if call not in source:
            return f"modal's image build (modal._image) no longer calls {call.strip('.(')}"
    return None


def _task_key() -> int:
    """Which build a log chunk belongs to: modal loads each image (and awaits its build) in a task of its own."""
    try:
        return id(asyncio.current_task())
    except RuntimeError:  # pragma: no cover - no running loop
        return 0


def _quiet_manager(log: BuildLog) -> Any:
    """Modal's disabled output manager (prints nothing), feeding the build log chunks to ``log``."""
    from modal._output.manager import DisabledOutputManager

    class SummarisingOutput(DisabledOutputManager):
        async def put_streaming_log(self, task_log: Any, prefix: str = "") -> None:
            try:
                log.feed(_task_key(), str(task_log.data))
            except Exception:  # pragma: no cover - never break Modal's build
                logger.debug("could not read an image build log chunk", exc_info=True)

        def flush_lines(self) -> None:  # one build's stream ended; the others go on
            log.flush(_task_key())

    return SummarisingOutput()


@contextlib.contextmanager
def watching(stage: Stage | None = None, labels: Sequence[tuple[str, Sequence[str]]] = ()) -> Iterator[BuildLog]:
    """Read Modal's image-build log into a :class:`BuildLog` (noting on ``stage``) while the block runs.

    Installed only where Modal's output is off (``verbose=True`` and a
    user's own ``modal.enable_output()`` keep Modal's full log).
    """
    log = BuildLog(stage, labels)
    previous: Any = None
    mine: Any = None
    if hook_missing() is None:
        from modal._output.manager import DisabledOutputManager
        from modal.output import OutputManager

        current = OutputManager.get()
        if type(current) is DisabledOutputManager:
            previous, mine = current, _quiet_manager(log)
            OutputManager._set(mine)
            log.hooked = True
    try:
        yield log
    finally:
        if mine is not None:
            from modal.output import OutputManager

            if OutputManager.get() is mine:
                OutputManager._set(previous)


def build_error(exc: BaseException, log: BuildLog, what: str) -> RemoteError | None:
    """Our error for a failed image build (``exc``: modal's ``ImageBuildError``); None if ``exc`` is another."""
    import modal.exception

    if not isinstance(exc, modal.exception.ImageBuildError):
        return None
    image_id = getattr(exc, "image_id", None) or ""
    build = log.find(image_id)
    name = build.name if build is not None and build.image_id else f"image {image_id}".strip()
    where = f" at step {build.step}" if build is not None and build.step else ""
    tail = ""
    if build is not None and build.lines:
        tail = " Its last build lines:\n" + "\n".join(f"    {line}" for line in build.lines) + "\n"
    said = " ".join(str(exc).split())
    again = "" if "modal image logs" in said else f"; `modal image logs {image_id}` shows it again"
    return RemoteError(
        f"{what}: building the {name} failed{where}.{tail} Modal says: {said} "
        f"ColbertIndexer(verbose=True) shows Modal's whole build log{again}."
    )
