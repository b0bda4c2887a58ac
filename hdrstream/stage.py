"""What a stage is, so one runner can drive any of them in-process or as a service.

A *source* (a camera) yields frames. A *stage* (preprocess, infer, sink) turns each
incoming frame into zero or more outgoing frames and flushes what it still holds when
the stream ends. Stages never import each other; they only see :class:`Frame`.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from hdrstream.frame import Frame


class Source(Protocol):
    name: str

    def frames(self) -> Iterator[Frame]:
        """Yield ``kind="frame"`` messages in capture order (no eos: the runner adds it)."""
        ...

    def close(self) -> None: ...


class Stage(Protocol):
    name: str

    def process(self, frame: Frame) -> Iterable[Frame]:
        """Handle one message; return what to send downstream (possibly nothing).

        The ``eos`` message comes here too, just before :meth:`finish`: it carries
        ``count`` and ``first_seq``, so a stage can tell which seqs it never got.
        """
        ...

    def finish(self) -> Iterable[Frame]:
        """The stream ended: return whatever is still buffered."""
        ...
