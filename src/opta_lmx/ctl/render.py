"""How lmxctl prints the supervisor's replies (the same whether they came over the local socket
or over HTTP)."""

from __future__ import annotations

import time

from opta_lmx.proto import AdmissionEstimate, MemoryReply, ModelInfo, ModelStatus, WorkerMemory


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def status_line(status: ModelStatus, width: int) -> str:
    """supervisord's format (name, state, description), plus memory and requests in flight."""
    if status.state == "RUNNING":
        uptime = int(time.time() - status.started_at)
        hours, rest = divmod(uptime, 3600)
        desc = f"pid {status.pid}, uptime {hours}:{rest // 60:02d}:{rest % 60:02d}"
        desc += f", mem {mib(status.memory)}, {status.active_requests} in flight"
    else:
        desc = status.description
    return f"{status.name:<{width}}{status.state:<10}{desc}"


def details_lines(status: ModelStatus, width: int) -> str:
    """Where the last start's time went, what the memory holds, the queue, and past exits
    (``status -v``)."""
    pad = " " * width
    first = f"{status.first_token_seconds:.2f}s" if status.first_token_seconds else "-"
    lines = [
        f"{pad}spawn {status.spawn_seconds:.2f}s, imports {status.import_seconds:.2f}s, "
        f"load {status.load_seconds:.2f}s, first request's time to first token {first}"
    ]
    if status.state == "RUNNING":
        lines.append(
            f"{pad}memory: uss {mib(status.memory)}, mlx active {mib(status.mlx_active)}, "
            f"mlx cache {mib(status.mlx_cache)}"
        )
        lines.append(
            f"{pad}requests: {status.active_requests} at the worker, {status.queued} of them waiting for a batch slot"
        )
    if status.restarts or status.stops:
        counts = {**{f"restarted ({k})": v for k, v in status.restarts.items()}, **status.stops}
        lines.append(f"{pad}since the server started: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if status.last_exit_cause:
        ago = int(time.time() - status.last_exit_at)
        lines.append(f"{pad}last exit ({status.last_exit_cause}, {ago}s ago): {status.last_exit}")
    return "\n".join(lines)


def models_table(models: list[ModelInfo]) -> str:
    """One line per configured model: its state, engine, estimate, how it loads, its path."""
    width = max((len(m.name) for m in models), default=0) + 3
    lines = []
    for model in models:
        keep = model.status.keep_alive
        flags = [
            "pinned" if model.pinned else "",
            "loads on start" if model.load_on_start else "loads on first request",
            f"keep_alive {keep:g}s" if keep >= 0 else "",
            f"batch {model.batch_size}, queue limit {model.request_limit}",
            f"aliases {', '.join(model.aliases)}" if model.aliases else "",
        ]
        lines.append(
            f"{model.name:<{width}}{model.status.state:<10}{model.engine:<6}~{mib(model.estimate):<10}"
            f"{model.path}  ({'; '.join(f for f in flags if f)})"
        )
    return "\n".join(lines)


def memory_report(memory: MemoryReply) -> str:
    lines = [
        f"budget {mib(memory.budget)}, used {mib(memory.used)}, free {mib(max(0, memory.budget - memory.used))} "
        f"(soft limit {mib(memory.soft_limit)}, hard limit {mib(memory.hard_limit)}"
        + (f", at most {memory.max_loaded_models} models)" if memory.max_loaded_models else ")")
    ]
    width = max((len(w.name) for w in memory.workers), default=0) + 3
    lines.extend(_worker_line(worker, width) for worker in memory.workers)
    if memory.estimate is not None:
        lines.append(_estimate_line(memory.estimate))
    return "\n".join(lines)


def _worker_line(worker: WorkerMemory, width: int) -> str:
    how = ", ".join(x for x in ("busy" if worker.busy else "idle", "pinned" if worker.pinned else "") if x)
    return (
        f"{worker.name:<{width}}{worker.state:<10}counted {mib(worker.counted)} (measured {mib(worker.used)}, "
        f"estimate {mib(worker.estimate)}); mlx active {mib(worker.mlx_active)}, cache {mib(worker.mlx_cache)}; {how}"
    )


def _estimate_line(estimate: AdmissionEstimate) -> str:
    head = f"{estimate.model}{' (loaded)' if estimate.loaded else ''}: needs about {mib(estimate.need)}, {mib(estimate.free)} free"
    if not estimate.fits:
        return f"{head}: would not fit ({estimate.reason})"
    if estimate.evict:
        return f"{head}: fits after evicting {', '.join(estimate.evict)}"
    return f"{head}: fits"
