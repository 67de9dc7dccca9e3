"""The node's memory: RSS, VmHWM and PSS of `serve` and its children, sampled from /proc."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ProcessMemory:
    label: str
    started: int  # clock ticks after boot (/proc/PID/stat field 22)
    rss: int = 0  # kB, last sample
    rss_peak: int = 0
    hwm: int = 0
    marks: dict[str, int] = field(default_factory=dict)  # RSS at named moments
    pss: dict[str, int] = field(default_factory=dict)  # PSS at the same moments


class MemorySampler(threading.Thread):
    """Samples the RSS of a process and all its descendants from /proc (no psutil needed)."""

    def __init__(self, root: int, roles: list[str], interval: float) -> None:
        super().__init__(name="memory", daemon=True)
        self.root = root
        self.roles = roles  # the spawned children in start order
        self.interval = interval
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.processes: dict[int, ProcessMemory] = {}
        self.spawned = 0
        self.total_peak = 0
        self.total_marks: dict[str, int] = {}
        self.total_pss: dict[str, int] = {}
        try:
            self.root_command = (
                Path(f"/proc/{root}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            self.root_command = ""

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def mark(self, name: str) -> None:
        """Remember each process's RSS and PSS now (PSS counts shared pages once, split between
        the processes that map them; reading it costs milliseconds, so only at marks)."""
        self.sample()
        with self.lock:
            total = total_pss = 0
            for pid, info in self.processes.items():
                if info.rss:
                    info.marks[name] = info.rss
                    info.pss[name] = _proc_pss(pid)
                    total += info.rss
                    total_pss += info.pss[name]
            self.total_marks[name] = total
            self.total_pss[name] = total_pss

    def sample(self) -> None:
        pids = self._tree(self.root)
        with self.lock:
            total = 0
            seen = set()
            for pid in pids:
                status = _proc_status(pid)
                if status is None:
                    continue
                seen.add(pid)
                info = self.processes.get(pid)
                if info is None:
                    info = ProcessMemory("", _start_ticks(pid))
                    self.processes[pid] = info
                info.rss = status.get("VmRSS", 0)
                info.rss_peak = max(info.rss_peak, info.rss)
                info.hwm = max(info.hwm, status.get("VmHWM", 0))
                total += info.rss
            unlabelled = [(pid, info) for pid, info in self.processes.items() if not info.label]
            for pid, info in sorted(unlabelled, key=lambda item: (item[1].started, item[0])):
                info.label = self._label(pid)
            for pid, info in self.processes.items():
                if pid not in seen:
                    info.rss = 0
            self.total_peak = max(self.total_peak, total)

    def _label(self, pid: int) -> str:
        if pid == self.root:
            return "serve (SCP, scheduler)"
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            command = ""
        if "resource_tracker" in command:
            return "resource tracker"
        if command == self.root_command:
            return ""  # forked, not yet executed: look again at the next sample
        if "spawn_main" in command:
            role = self.roles[self.spawned] if self.spawned < len(self.roles) else "restarted child"
            self.spawned += 1
            return role
        return command.split(" ")[0].rsplit("/", 1)[-1] or f"pid {pid}"

    @staticmethod
    def _tree(root: int) -> list[int]:
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                    todo += [int(c) for c in text.split()]
            except OSError:
                continue
        return found


def _proc_status(pid: int) -> dict[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    return values


def _proc_pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _start_ticks(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0
