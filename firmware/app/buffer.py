"""Offline telemetry buffer kept in flash.

While the broker is unreachable, each telemetry message is written as one
small file ``<dir>/<seq>`` (sequence numbers are zero-padded, so names sort
in order). After reconnect the oldest is sent first and removed only once the
broker acknowledged it (QoS 1), so a reset in between re-sends it rather than
losing it. When the buffer is full the oldest message is dropped and counted;
the counter is reported in ``status``. One file per message keeps every write
small and lets littlefs spread the wear.

*fs* is the board layer's filesystem: ``listdir(path)``, ``open(path, mode)``,
``remove(path)``, ``mkdir(path)``, ``exists(path)``.
"""

_WIDTH = 10


class OfflineBuffer:
    def __init__(self, fs, directory="buf", capacity=100):
        if capacity < 1:
            raise ValueError("buffer capacity must be >= 1, got %r" % (capacity,))
        self.fs = fs
        self.dir = directory
        self.capacity = capacity
        if not fs.exists(directory):
            fs.mkdir(directory)
        names = sorted(n for n in fs.listdir(directory) if n.isdigit())
        self._seqs = [int(n) for n in names]
        self._next = self._seqs[-1] + 1 if self._seqs else 1
        self.dropped = self._read_dropped()
        while len(self._seqs) > capacity:  # capacity lowered by a new config
            self.drop_oldest()

    def _path(self, seq):
        return "%s/%0*d" % (self.dir, _WIDTH, seq)

    def _read_dropped(self):
        path = self.dir + "/dropped"
        if not self.fs.exists(path):
            return 0
        try:
            with self.fs.open(path, "r") as f:
                return int(f.read().strip() or "0")
        except ValueError:
            return 0

    def _write_dropped(self):
        with self.fs.open(self.dir + "/dropped", "w") as f:
            f.write(str(self.dropped))

    def drop_oldest(self):
        seq = self._seqs.pop(0)
        self.fs.remove(self._path(seq))
        self.dropped += 1
        self._write_dropped()

    def __len__(self):
        return len(self._seqs)

    def push(self, payload):
        """Store one message (bytes); drops the oldest when full."""
        if len(self._seqs) >= self.capacity:
            self.drop_oldest()
        seq = self._next
        self._next += 1
        with self.fs.open(self._path(seq), "wb") as f:
            f.write(payload)
        self._seqs.append(seq)
        return seq

    def peek(self):
        """(seq, payload) of the oldest message, or None when empty."""
        if not self._seqs:
            return None
        seq = self._seqs[0]
        with self.fs.open(self._path(seq), "rb") as f:
            return seq, f.read()

    def remove(self, seq):
        """Forget message *seq* once the broker has acknowledged it."""
        if self._seqs and self._seqs[0] == seq:
            self._seqs.pop(0)
            self.fs.remove(self._path(seq))
