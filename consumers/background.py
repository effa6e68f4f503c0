"""A Kafka loop on a background thread, for consumers that run beside other work.

Subclasses write ``_run``, which loops until ``self._stop`` is set.

>>> import queue
>>> class Doubler(Background):
...     name = "doubler"
...     def __init__(self):
...         super().__init__()
...         self.inbox, self.outbox = queue.Queue(), queue.Queue()
...     def _run(self):
...         while not self._stop.is_set():
...             try:
...                 self.outbox.put(2 * self.inbox.get(timeout=0.01))
...             except queue.Empty:
...                 pass
>>> d = Doubler().start()
>>> d.inbox.put(21)
>>> d.outbox.get(timeout=5)
42
>>> d.stop()
>>> d.running
False
"""

from __future__ import annotations

import threading


class Background:
    """Runs :meth:`_run` on a daemon thread from :meth:`start` until :meth:`stop`."""

    name = "background"

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to end, and wait up to ``timeout`` seconds for it."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        raise NotImplementedError
