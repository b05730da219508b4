"""Per-op shares of a block's time (`liveavatar-rt bench --compare`): where the time goes.

torch.profiler (CPU activity; CUDA too where there is a GPU) records every aten and
liveavatar_rt op the blocks run; each op's *self* time (its own work, not its callees') is summed
and divided by the profiled blocks. Calls are profiler events: a liveavatar_rt op counts twice
per call (its dispatcher entry and its kernel record the same name; self time is not doubled).
The profiled run is a separate short session: the profiler's
own overhead (~microseconds per op) stays out of the timed runs.
"""
from __future__ import annotations

import torch

TOP = 12  # ops listed; the rest are summed as "other"


def start_profiler() -> torch.profiler.profile:
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=acts)
    prof.start()
    return prof


def op_shares(prof: torch.profiler.profile, blocks: int, top: int = TOP) -> dict:
    """-> {"blocks", "self_ms_per_block" (all ops), "ops": [{"op", "calls_per_block", "ms_per_block",
    "share"}] (largest first, then "other")} from a stopped profiler over `blocks` blocks."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)  # microseconds
    events.sort(key=lambda e: -e.self_cpu_time_total)
    n = max(blocks, 1)
    rows = [{"op": e.key, "calls_per_block": e.count / n, "ms_per_block": e.self_cpu_time_total / 1e3 / n,
             "share": e.self_cpu_time_total / total} for e in events[:top]]
    rest = events[top:]
    if rest:
        us = sum(e.self_cpu_time_total for e in rest)
        rows.append({"op": f"other ({len(rest)} ops)", "calls_per_block": sum(e.count for e in rest) / n,
                     "ms_per_block": us / 1e3 / n, "share": us / total})
    return {"blocks": blocks, "self_ms_per_block": total / 1e3 / n, "ops": rows}
