"""What a process holds, read from /proc: threads, open file descriptors, memory."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessStats:
    threads: int
    fds: int
    rss_bytes: int
    peak_rss_bytes: int  # VmHWM: the high-water mark since the process started

    def __str__(self) -> str:
        return (f"threads={self.threads} fds={self.fds} rss={self.rss_bytes / 2**20:.1f}MiB "
                f"peak_rss={self.peak_rss_bytes / 2**20:.1f}MiB")


def process_stats(pid: int) -> ProcessStats:
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return ProcessStats(
        threads=int(fields["Threads"]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        rss_bytes=int(fields["VmRSS"].split()[0]) * 1024,
        peak_rss_bytes=int(fields["VmHWM"].split()[0]) * 1024,
    )
