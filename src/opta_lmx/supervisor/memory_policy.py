"""Memory policy: pure functions from readings to actions, with hysteresis. No processes here.

Admission (a model is about to load): if its estimated need does not fit the budget, evict idle
workers, least recently used first; never a busy or pinned one; if it still does not fit, refuse.

Policing (every reading): above the soft limit, ask the largest workers to trim; above the hard
limit for ``hard_readings`` readings in a row, evict the least recently used idle worker, and when
none is idle, kill the largest one as a last resort.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class WorkerView:
    name: str
    used: int  # bytes, the larger of the worker's own report and the OS view of its tree
    busy: bool
    pinned: bool
    last_used: float  # monotonic seconds


@dataclass(frozen=True)
class Admit:
    evict: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Refuse:
    needed: int
    available: int
    reason: str


@dataclass(frozen=True)
class Trim:
    name: str


@dataclass(frozen=True)
class Evict:
    name: str
    reason: str


@dataclass(frozen=True)
class Kill:
    name: str
    reason: str


Action = Trim | Evict | Kill


@dataclass(frozen=True)
class Limits:
    budget: int
    soft: int
    hard: int
    hard_readings: int = 3


def estimate_need(model_path: Path, factor: float, kv_headroom: int, process_overhead: int) -> int:
    """Weights on disk x factor + KV headroom + what a worker process costs before any weights."""
    weights = 0
    if model_path.is_dir():
        weights = sum(p.stat().st_size for p in model_path.glob("*.safetensors"))
        weights += sum(p.stat().st_size for p in model_path.glob("*.gguf"))
    elif model_path.is_file():
        weights = model_path.stat().st_size
    return int(weights * factor) + kv_headroom + process_overhead


def _evictable(workers: list[WorkerView]) -> list[WorkerView]:
    return sorted((w for w in workers if not w.busy and not w.pinned), key=lambda w: w.last_used)


def admit(need: int, loaded: list[WorkerView], budget: int, max_loaded: int) -> Admit | Refuse:
    """Which idle workers to evict so that ``need`` bytes fit, or why it cannot fit."""
    used = sum(w.used for w in loaded)
    count = len(loaded)
    evict: list[str] = []
    for victim in _evictable(loaded):
        fits = used + need <= budget and (max_loaded <= 0 or count < max_loaded)
        if fits:
            break
        evict.append(victim.name)
        used -= victim.used
        count -= 1
    if used + need > budget:
        return Refuse(need, max(0, budget - used), "not enough memory even after evicting every idle model")
    if max_loaded > 0 and count >= max_loaded:
        return Refuse(need, max(0, budget - used), f"max_loaded_models={max_loaded} are loaded and busy or pinned")
    return Admit(evict)


def police(workers: list[WorkerView], limits: Limits, over_hard: int) -> tuple[list[Action], int]:
    """Actions for this reading, and the new count of consecutive readings over the hard limit."""
    used = sum(w.used for w in workers)
    if used <= limits.soft:
        return [], 0
    actions: list[Action] = [Trim(w.name) for w in sorted(workers, key=lambda w: -w.used)]
    if used <= limits.hard:
        return actions, 0
    over_hard += 1
    if over_hard < limits.hard_readings:
        return actions, over_hard
    idle = _evictable(workers)
    if idle:
        return [Evict(idle[0].name, f"memory {used} over the hard limit {limits.hard}")], 0
    unpinned = [w for w in workers if not w.pinned] or workers
    largest = max(unpinned, key=lambda w: w.used)
    return [Kill(largest.name, f"memory {used} over the hard limit {limits.hard}, nothing idle to evict")], 0
