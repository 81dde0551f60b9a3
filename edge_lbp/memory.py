"""Memory on the device: the peak resident memory of this process over a window of work (a training phase, a
run), and the check that a training step fits in what is free."""
import os

import psutil

_KB = 1024


class PeakMemory:
    """On Linux the high-water mark (VmHWM) can be reset by writing ``5`` to ``/proc/self/clear_refs``, so each
    window gets its own true peak. Elsewhere (or without write access) the RSS when asked is all psutil can give;
    ``method`` and ``is_peak`` say which one it is."""

    def __init__(self):
        try:
            self._status = os.open("/proc/self/status", os.O_RDONLY)
            self._clear = os.open("/proc/self/clear_refs", os.O_WRONLY)
            os.write(self._clear, b"5")
            self._hwm()
        except (OSError, ValueError):
            self._status = self._clear = None
            self._process = psutil.Process()
            self.method, self.is_peak = "RSS at the end of each window (psutil); not a peak", False
        else:
            self.method, self.is_peak = "peak RSS (VmHWM reset through /proc/self/clear_refs)", True

    def _hwm(self) -> int:
        status = os.pread(self._status, 8192, 0)
        start = status.index(b"VmHWM:") + 6
        return int(status[start : status.index(b"kB", start)]) * _KB

    def reset(self) -> None:
        """Start a new window."""
        if self._clear is not None:
            os.write(self._clear, b"5")

    def peak(self) -> int:
        """Bytes: the peak since the last reset (or the current RSS where no peak can be read)."""
        return self._hwm() if self._status is not None else self._process.memory_info().rss

    def close(self) -> None:
        for fd in (self._status, self._clear):
            if fd is not None:
                os.close(fd)
        self._status = self._clear = None


def check_step_fits(session, batch_size: int) -> None:
    """Refuse a batch whose step cannot fit in the memory available now, before it fails (or swaps) halfway
    through an epoch. 10 % stays free for what the estimate leaves out (BLAS buffers, the allocator)."""
    if not session.capabilities.memory_estimate:
        return
    budget = 0.9 * psutil.virtual_memory().available
    needed = session.step_bytes(batch_size)
    if needed > budget:
        one = session.step_bytes(1)
        per_sample = max(1, (needed - one) // max(1, batch_size - 1))
        largest = int((budget - (one - per_sample)) // per_sample)
        raise MemoryError(f"a training step at batch {batch_size} needs about {needed / 2**20:.0f} MiB beyond "
                          f"the model, and {budget / 2**20:.0f} MiB are free: "
                          + (f"the largest batch that fits is about {largest}" if largest >= 1
                             else "not even batch 1 fits"))
