"""The agent-session benchmark's report: per-turn tables, per-session figures, Opta-LMX against
each peer as ratios, the targets with PASS/FAIL, and the restart probe."""

from __future__ import annotations

import statistics
from typing import Any

OPTA = "opta-lmx"
# A turn may re-tokenize the end of the previous prompt differently (where the next message
# joins it): this many tokens short of the whole previous prompt still counts as all of it.
TAIL = 16


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _sessions(turns: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for t in turns:
        out.setdefault(t["session"], []).append(t)
    return {k: sorted(v, key=lambda t: t["turn"]) for k, v in sorted(out.items())}


def session_figures(run: dict[str, Any]) -> dict[str, Any]:
    """What one server did in one phase: times, reuse, errors."""
    sessions = _sessions(run["turns"])
    shortfalls, ratios = [], []
    for turns in sessions.values():
        for before, turn in zip(turns, turns[1:]):
            if before["prompt_tokens"] and turn["cached_tokens"] is not None:
                shortfalls.append(before["prompt_tokens"] - turn["cached_tokens"])
                ratios.append(turn["cached_tokens"] / before["prompt_tokens"])
    first = next(iter(sessions.values()), [])
    ttft = {t["turn"]: t["ttft_s"] for t in first}
    last = max(ttft) if ttft else 0
    return {
        "wall_s": run["wall_s"],
        "errors": sum(not t["ok"] for t in run["turns"]),
        "error_samples": [t["error"] for t in run["turns"] if t["error"]][:3],
        "ttft_turn1": ttft.get(1), "ttft_turn2": ttft.get(2), "ttft_last": ttft.get(last),
        "last_over_2": ttft[last] / ttft[2] if ttft.get(2) and ttft.get(last) else None,
        "ttft_median_later": _median([t["ttft_s"] for s in sessions.values() for t in s if t["turn"] > 1]),
        "latency_median": _median([t["latency_s"] for s in sessions.values() for t in s]),
        "max_shortfall": max(shortfalls) if shortfalls else None,
        "min_reuse": min(ratios) if ratios else None,
        # None when the server does not report cached tokens (then nothing is known of its reuse).
        "computed": None if any(t["ok"] and t["cached_tokens"] is None for t in run["turns"]) else
        sum((t["prompt_tokens"] or 0) - (t["cached_tokens"] or 0) for t in run["turns"]),
        "first_turn_cached": [s[0]["cached_tokens"] for s in sessions.values() if s],
    }


def markdown(result: dict[str, Any]) -> str:
    w = result["workload"]
    lines = [
        f"# Agent sessions ({result['date']})", "",
        f"- Machine: {result['machine']}",
        f"- Command: `{result['command']}`; code `src/opta_lmx` sha256 {result['source']['sha256']}",
        f"- Model: `{result['model']}` (tiny demo model, long context); {result['max_tokens']} tokens a turn, "
        "greedy, the end token banned",
        "- Opta-LMX's workers preload the system's OpenBLAS if it has one (supervisor.preload_blas = \"auto\"); "
        + ("so do the peers (--blas-for-peers)" if result.get("peers_blas") else "the peers run on the wheel's BLAS"),
        f"- Workload: system prompt + tools {w['system_tokens']:,} tokens ({w['tools']} tools, "
        f"{w['tool_tokens']:,} tokens of them), {w['turns']} turns a session, tool results of "
        f"{w['result_tokens'][0]:,}-{w['result_tokens'][1]:,} tokens; {w['concurrent_sessions']} sessions at once in "
        "phase 2",
        "",
    ]
    for name, info in result["servers"].items():
        if "error" in info:
            lines.append(f"- **{name} did not run**: {info['error'][:300]}")
    phases = result["phases"]
    figures = {phase: {s: session_figures(run) for s, run in runs.items()}
               for phase, runs in phases.items() if phase != "restart"}
    if "single" in phases:
        lines += _phase_table("One session alone", figures["single"]) + [""] + _turn_table(phases["single"]) + [""]
    if "concurrent" in phases:
        lines += _phase_table(f"{w['concurrent_sessions']} sessions at once, one system prompt",
                              figures["concurrent"]) + [""]
    lines += _ratios(figures) + [""] + _targets(figures, w) + [""]
    if "restart" in phases:
        lines += _restart(phases["restart"])
    return "\n".join(lines) + "\n"


def _phase_table(title: str, servers: dict[str, dict[str, Any]]) -> list[str]:
    out = [f"## {title}", "",
           "| server | wall s | TTFT turn 1 s | TTFT turn 2 s | TTFT last s | last / 2 | TTFT median, turns 2+ | "
           "turn latency median s | prompt tokens computed | first turns' cached tokens | min reuse | errors |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, f in servers.items():
        out.append(
            f"| {name} | {_fmt(f['wall_s'], 1)} | {_fmt(f['ttft_turn1'])} | {_fmt(f['ttft_turn2'])} | "
            f"{_fmt(f['ttft_last'])} | {_fmt(f['last_over_2'])} | {_fmt(f['ttft_median_later'])} | "
            f"{_fmt(f['latency_median'])} | {_fmt(f['computed'], 0)} | {', '.join(map(str, f['first_turn_cached']))} | "
            f"{_fmt(f['min_reuse'] and 100 * f['min_reuse'], 1)} % | {f['errors']} |")
        for sample in f["error_samples"]:
            out.append(f"|  | error: {sample[:200]} |||||||||||")
    return out


def _turn_table(runs: dict[str, Any]) -> list[str]:
    names = list(runs)
    out = ["Per turn (prompt tokens / cached / TTFT s):", "",
           "| turn | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    by_server = {n: {t["turn"]: t for t in runs[n]["turns"]} for n in names}
    for number in sorted({t for turns in by_server.values() for t in turns}):
        cells = []
        for n in names:
            t = by_server[n].get(number)
            cells.append("-" if t is None else f"{t['prompt_tokens']} / {t['cached_tokens']} / {_fmt(t['ttft_s'])}")
        out.append(f"| {number} | " + " | ".join(cells) + " |")
    return out


def _ratios(figures: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    out = ["## Opta-LMX against each peer (ratios below 1: Opta-LMX is faster)", "",
           "| peer | phase | session wall | TTFT median, turns 2+ | turn latency median |", "|---|---|---|---|---|"]
    for phase, servers in figures.items():
        mine = servers.get(OPTA)
        for name, theirs in servers.items():
            if name == OPTA or mine is None:
                continue
            out.append(f"| {name} | {phase} | ×{_fmt(_ratio(mine['wall_s'], theirs['wall_s']))} | "
                       f"×{_fmt(_ratio(mine['ttft_median_later'], theirs['ttft_median_later']))} | "
                       f"×{_fmt(_ratio(mine['latency_median'], theirs['latency_median']))} |")
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _targets(figures: dict[str, dict[str, dict[str, Any]]], workload: dict[str, Any]) -> list[str]:
    out = ["## Targets (Opta-LMX)", "", "| target | wanted | measured | |", "|---|---|---|---|"]
    single = figures.get("single", {}).get(OPTA)
    concurrent = figures.get("concurrent", {}).get(OPTA)
    if single is not None:
        shortfall = single["max_shortfall"]
        out.append(_row("each turn takes the whole previous prompt from cache", f"short by ≤ {TAIL} tokens",
                        f"short by at most {shortfall} tokens", shortfall is not None and shortfall <= TAIL))
        out.append(_row("TTFT of the last turn against turn 2 (same new text)", "≤ 1.5×",
                        f"×{_fmt(single['last_over_2'])}", (single["last_over_2"] or 99) <= 1.5))
        peers = [f["wall_s"] for n, f in figures["single"].items() if n != OPTA and f["errors"] == 0]
        if peers:
            ratio = single["wall_s"] / min(peers)
            out.append(_row("session time against the better peer", "≤ 0.67×", f"×{_fmt(ratio)}", ratio <= 0.67))
    if concurrent is not None:
        shared = [c for c in concurrent["first_turn_cached"] if (c or 0) >= 0.9 * workload["system_tokens"]]
        sessions = len(concurrent["first_turn_cached"])
        out.append(_row("the shared system prompt is prefilled once", f"{sessions - 1} of {sessions} first turns "
                        "take it from cache", f"{len(shared)}", len(shared) >= sessions - 1))
    return out


def _row(what: str, wanted: str, measured: str, ok: bool) -> str:
    return f"| {what} | {wanted} | {measured} | {'PASS' if ok else 'FAIL'} |"


def _restart(probe: dict[str, Any]) -> list[str]:
    warm, disk, cold = (probe.get(n) or {} for n in ("probe-warm", "probe-disk", "probe-cold"))
    out = [f"## Restart probe (Opta-LMX): the next turn after {probe['turns_before']} turns", "",
           "| the worker before the turn | TTFT s | prompt tokens | cached |", "|---|---|---|---|"]
    for label, t in (("kept running (warm, in memory)", warm), ("restarted, disk tier on", disk),
                     ("restarted, disk tier off", cold)):
        out.append(f"| {label} | {_fmt(t.get('ttft_s'))} | {t.get('prompt_tokens')} | {t.get('cached_tokens')} |")
    ratio_warm = _ratio(disk.get("ttft_s"), warm.get("ttft_s"))
    ratio_cold = _ratio(disk.get("ttft_s"), cold.get("ttft_s"))
    out += ["", _row_plain("disk tier against warm", "≤ 2×", ratio_warm),
            _row_plain("disk tier against no tier", "well under 1×", ratio_cold)]
    return out


def _row_plain(what: str, wanted: str, ratio: float | None) -> str:
    return f"- {what}: ×{_fmt(ratio)} (wanted {wanted})"
