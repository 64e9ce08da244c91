"""Image builds played by the stand-in: off by default (every image is "already built").

``StandIn.build_images()`` turns them on for a test: an image the stand-in
has not built yet is answered by ``ImageGetOrCreate`` without a result (not
built), and ``ImageJoinStreaming`` then streams a build log the way Modal's
server writes one, in chunks that do not keep to line ends::

    Building image im-...

    => Step 0: FROM base
    => Step 1: RUN apt-get install -y git
    ...
    Saving image...
    Image saved, took 0.01s

    Built image im-... in 0.05s

followed by the result (success and the image's metadata, or a failure at
the first step that contains ``fail_on``, after its ``failure`` lines). A
built image stays built until the stand-in is reset.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from modal_proto import api_pb2

__all__ = ["ImageBuilds", "Playback"]

#: Characters per streamed log chunk: small enough that lines arrive cut in pieces.
CHUNK = 40


@dataclass
class Playback:
    """One build as streamed: its log chunks, then its result."""

    image_id: str
    chunks: list[str]
    result: api_pb2.GenericResult
    metadata: api_pb2.ImageMetadata


@dataclass
class ImageBuilds:
    """Which images build, and how (``StandIn.builds``)."""

    enabled: bool = False
    fail_on: str | None = None
    failure: list[str] = field(default_factory=list)
    built: set[str] = field(default_factory=set)
    pending: dict[str, Any] = field(default_factory=dict)
    #: Image ids in the order their builds were streamed, and which of them failed.
    played: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    plays: dict[str, Playback] = field(default_factory=dict)

    def needs_build(self, image_id: str, request: Any) -> bool:
        """True (and the build is queued) where ``ImageGetOrCreate`` must answer "not built yet"."""
        if not self.enabled or image_id in self.built:
            return False
        self.pending.setdefault(image_id, request)
        return True

    def play(self, image_id: str) -> Playback:
        """The build of ``image_id``: its log and result (the image counts as built unless it failed)."""
        if image_id in self.plays:  # the client joined again (after a dropped stream): the same build
            return self.plays[image_id]
        request = self.pending.pop(image_id, None)
        commands = list(request.image.dockerfile_commands) if request is not None else []
        lines = [f"Building image {image_id}", ""]
        failed = False
        for i, command in enumerate(commands):
            lines.append(f"=> Step {i}: {command}")
            if self.fail_on and self.fail_on in command:
                lines.extend(self.failure or ["error: the command failed"])
                failed = True
                break
            if command.startswith("RUN "):
                lines.append(f"ok: {command[4:40]}")
        if failed:
            result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE)
            self.failed.append(image_id)
        else:
            lines += ["Saving image...", "Image saved, took 0.01s", "", f"Built image {image_id} in 0.05s"]
            result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_SUCCESS)
            self.built.add(image_id)
        self.played.append(image_id)
        text = "\n".join(lines) + "\n"
        chunks = [text[i : i + CHUNK] for i in range(0, len(text), CHUNK)]
        play = self.plays[image_id] = Playback(image_id, chunks, result, image_metadata(request))
        return play


def image_metadata(request: Any) -> api_pb2.ImageMetadata:
    """What Modal reports about a built image: this interpreter's Python, the requested builder version."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    version = request.builder_version if request is not None else ""
    return api_pb2.ImageMetadata(python_version_info=py, image_builder_version=version)
