"""Stream ``seq`` from the camera's BlockID, so losses show up as gaps in the right places.

preprocess.window.ExposureCycle needs ``seq % n`` to mean the same exposure for the whole
stream. A frame counter of our own would shift the cycle after every lost frame; the
camera's BlockID counts every frame it produced, lost ones included. So within a grab
session ``seq = offset + (BlockID − first BlockID)``, and the offset is chosen once per
session so the first frame's seq is congruent to its set. After a reconnect (BlockIDs
restart) a new session starts at least one seq after the last, leaving a visible gap.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

GEV_BLOCK_WRAP = 0xFFFF  # GigE Vision 1.x block IDs are 16 bit and skip 0 when they wrap
_WRAP_ZONE = 0x1000


class SeqMapper:
    def __init__(self, cycle_length: int) -> None:
        if cycle_length < 1:
            raise ValueError(f"cycle_length must be >= 1, got {cycle_length}")
        self.n = cycle_length
        self.last_seq: int | None = None  # last seq handed out
        self.resyncs = 0  # times a frame's set disagreed with its seq and the stream skipped ahead
        self.restarts = 0  # BlockID went backwards without a reconnect
        self._min_next = 0
        self._last_block: int | None = None
        self._index = 0
        self._offset: int | None = None

    def new_session(self, gap: int = 1) -> None:
        """The next block starts a new session; its seq leaves at least ``gap`` seqs out."""
        self._last_block = None
        self._offset = None
        if self.last_seq is not None:
            self._min_next = max(self._min_next, self.last_seq + 1 + gap)

    def index(self, block_id: int, first_index: int = 0) -> int:
        """Frames since the session started, counted by BlockID.

        ``first_index`` is what the first block of a session counts as (the software-trigger
        loop knows which trigger it is answering).
        """
        block_id = int(block_id)
        if self._last_block is not None:
            step = block_id - self._last_block
            if step <= 0 and self._last_block > GEV_BLOCK_WRAP - _WRAP_ZONE and block_id < _WRAP_ZONE:
                step += GEV_BLOCK_WRAP
            if step > 0:
                self._last_block = block_id
                self._index += step
                return self._index
            self.restarts += 1
            log.warning("BlockID went back from %d to %d: the camera restarted its count; starting a new "
                        "session after a gap", self._last_block, block_id)
            self.new_session(gap=1)
        self._last_block = block_id
        self._index = first_index
        return self._index

    def next_position(self) -> int:
        """Cycle position of the earliest seq the next session may start at."""
        return self._min_next % self.n

    def predicted(self, index: int) -> int | None:
        """The seq a block at ``index`` gets, if the session's offset is known (for logs)."""
        return None if self._offset is None else self._offset + index

    def seq(self, index: int, set_: int) -> int:
        """The seq of a delivered frame at ``index`` whose cycle position is ``set_``."""
        if self._offset is None:
            first = self._min_next + (set_ - self._min_next) % self.n
            self._offset = first - index
        seq = self._offset + index
        if seq % self.n != set_ % self.n:
            shift = (set_ - seq) % self.n
            self.resyncs += 1
            log.warning("frame at seq %d reports set %d; skipping %d seq(s) so the exposure cycle stays aligned",
                        seq, set_, shift)
            seq += shift
            self._offset += shift
        if self.last_seq is not None and seq <= self.last_seq:  # cannot happen with monotonic BlockIDs
            raise RuntimeError(f"seq {seq} would not increase past {self.last_seq}; BlockID bookkeeping is broken")
        self.last_seq = seq
        return seq
