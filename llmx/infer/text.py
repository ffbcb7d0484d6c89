"""Text of a generation as it grows: stop strings and the part safe to stream (paddle-free).

The whole generated text is decoded again at each token (a SentencePiece piece can change how the
text before it renders, and a byte-fallback character spans several tokens); what is streamed is
what no later token can take back: not a trailing replacement character (a half-decoded UTF-8
character) and not a tail that could still grow into a stop string."""
from __future__ import annotations

from typing import Optional, Sequence


class TextTracker:
    def __init__(self, decode, stop: Sequence[str] = ()) -> None:
        self.decode = decode  # token ids -> text
        self.stop = [s for s in stop if s]
        self.emitted = ""  # text already handed out (streamed)
        self.text = ""  # the generation's text, cut at a stop string once one appears
        self.stopped = False

    def update(self, tokens: Sequence[int]) -> str:
        """Take the tokens generated so far; return the new text that is safe to hand out now.
        Sets `stopped` when a stop string appeared (the text is cut before it)."""
        text = self.decode(list(tokens))
        cut = self._first_stop(text)
        if cut is not None:
            self.text, self.stopped = text[:cut], True
            return self._emit(self.text)
        self.text = text
        safe = len(text)
        while safe > 0 and text[safe - 1] == "\ufffd":
            safe -= 1
        for s in self.stop:  # hold back a tail that is the start of a stop string
            for n in range(min(len(s) - 1, safe), 0, -1):
                if text[safe - n:safe] == s[:n]:
                    safe -= n
                    break
        return self._emit(text[:safe])

    def finish(self) -> str:
        """The rest of the text, at the end of the generation."""
        return self._emit(self.text)

    def _first_stop(self, text: str) -> Optional[int]:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _emit(self, text: str) -> str:
        if not text.startswith(self.emitted):  # the decoder re-rendered streamed text: stream nothing more of it
            return ""
        delta, self.emitted = text[len(self.emitted):], text
        return delta
