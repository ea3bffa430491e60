"""Turns chat-loadgen JSON lines (stdin) into bench/results.json and bench/summary.md.

The summary puts every figure of issue 23's target list beside the same figure of the
previous bench/results.json (read before it is overwritten), with the load average of the
machine before each run: the benchmark shares the machine with whatever else runs on it.
"""
import json
import os
import re
import sys

out = sys.argv[1]
rows = [json.loads(line) for line in sys.stdin if line.strip()]
previous = []
try:
    with open(f"{out}/results.json") as f:
        previous = json.load(f)
except (OSError, ValueError):
    pass
with open(f"{out}/results.json", "w") as f:
    json.dump(rows, f, indent=2)


def get(row, *keys):
    for k in keys:
        row = row.get(k) if isinstance(row, dict) else None
    return "" if row is None else row


def redis_cpu_per_cycle(r):
    us, cycles = r.get("redis_cpu_us"), r.get("cycles")
    return round(us / cycles, 1) if us is not None and cycles else None


def core1_per_cycle(r):
    """The load generator's and redis-server's CPU per cycle: both share core 1."""
    own, redis = r.get("loadgen_cpu_us_per_cycle"), redis_cpu_per_cycle(r)
    if own is None or redis is None:
        return None
    busy = round((own + redis) * r["cycles_per_s"] / 1e4)
    return f"{own} + {redis} (core 1 {busy}% busy)"


lines = [
    "# Benchmark summary",
    "",
    "Gateway pinned to core 0, load generator to core 1 (taskset). "
    "How to read it: README, \"Reading the benchmark\". "
    "**load** is the machine's 1/5/15-minute load average before the run: on a shared "
    "2-core machine anything above ~0.5 means other work competed with the benchmark.",
    "",
    "| run | rate | latency p50 / p99 / max (ms) | gateway CPU | RSS per conn | drops / errors | load |",
    "|---|---|---|---|---|---|---|",
]
for r in rows:
    label = r.get("label", "?")
    load = r.get("load_before", "")
    if r.get("failed"):
        lines.append(f"| {label} | failed | | | | | {load} |")
        continue
    mode = r.get("mode")
    if mode == "idle":
        lines.append(
            f"| {label} | {r['connect_per_s']} conn/s ({r['connections']} held) | "
            f"| {get(r, 'gateway_cpu_us_per_connect')} µs/connect "
            f"(load generator {get(r, 'loadgen_cpu_us_per_connect')}) "
            f"| {get(r, 'gateway_rss_per_conn_bytes')} B | {r['errors']} | {load} |"
        )
    elif mode == "fanout":
        lat = r["latency_ms"]
        lines.append(
            f"| {label} | {r['delivered_per_s']} delivered/s ({r['published_per_s']} sent/s) "
            f"| {lat['p50']} / {lat['p99']} / {lat['max']} "
            f"| {get(r, 'gateway_cpu_us_per_delivery')} µs/delivery "
            f"(load generator {get(r, 'loadgen_cpu_us_per_delivery')}) | | {r['drops']} / {r['send_errors']} "
            f"| {load} |"
        )
    elif mode == "floor":
        lat, span = r["latency_ms"], r["fanout_ms"]
        lines.append(
            f"| {label} | {r['written_per_s']} written/s, no gateway "
            f"| {lat['p50']} / {lat['p99']} / {lat['max']} (writing all {r['members']}: "
            f"{span['p50']} / {span['p99']}) "
            f"| {get(r, 'writer_cpu_us_per_delivery')} µs/delivery (the writer thread; "
            f"its readers {get(r, 'reader_cpu_us_per_delivery')}) "
            f"| | {r['drops']} / {r['write_errors']} | {load} |"
        )
    elif mode == "churn":
        beside = f"load generator {get(r, 'loadgen_cpu_us_per_cycle')}"
        if redis_cpu_per_cycle(r) is not None:
            beside += f", redis-server {redis_cpu_per_cycle(r)}"
        lines.append(
            f"| {label} | {r['cycles_per_s']} cycles/s | | {get(r, 'gateway_cpu_us_per_cycle')} µs/cycle "
            f"({beside}) | | {r['errors']} | {load} |"
        )
    elif mode == "storm":
        lines.append(
            f"| {label} | {r['presence_frames']} presence frames to {r['members']} members "
            f"({r['presence_frames_per_member']} each, max {r['presence_frames_per_member_max']}; "
            f"one per join: {r['one_per_join_would_be']}), joins took {r['join_secs']} s "
            f"| | {get(r, 'gateway_cpu_ms')} ms CPU | | {r['errors']} | {load} |"
        )


def per_message(r, key, digits):
    """A figure of the whole run (`redis_commands`, `redis_cpu_us`) per message sent."""
    n = r.get(key)
    msgs = (r.get("published_per_s") or 0) * (r.get("duration_s") or 0)
    return round(n / msgs, digits) if n is not None and msgs else None


def redis_per_message(r):
    return per_message(r, "redis_commands", 2)


def redis_cpu_per_message(r):
    return per_message(r, "redis_cpu_us", 1)


def redis_per_cycle(r):
    n, cycles = r.get("redis_commands"), r.get("cycles")
    return round(n / cycles, 2) if n is not None and cycles else None


def cpu_p99(cpu):
    """A fan-out row's CPU per delivery (the key `cpu`) with its p99: "4.2 (5.1)"."""
    return lambda r: (f"{r[cpu]} ({get(r, 'latency_ms', 'p99')})"
                      if r.get(cpu) is not None and r.get("latency_ms") else None)


# (figure, label pattern, value of a row, target text, met(value, previous value))
TARGETS = [
    ("idle RSS per connection, memory (B)", r"^memory idle \d+$",
     lambda r: r.get("gateway_rss_per_conn_bytes"), "≤ 4096", lambda v, p: v <= 4096),
    ("idle RSS per connection, Redis (B)", r"^redis idle \d+$",
     lambda r: r.get("gateway_rss_per_conn_bytes"), "≤ 5120", lambda v, p: v <= 5120),
    ("connects/s with ?user=, memory", r"^memory idle \d+ \?user=$",
     lambda r: r.get("connect_per_s"), "≥ 25000", lambda v, p: v >= 25000),
    ("connects/s with ?user=, Redis", r"^redis idle \d+ \?user=$",
     lambda r: r.get("connect_per_s"), "≥ 25000", lambda v, p: v >= 25000),
    ("the same against a bare endpoint, no gateway (connect floor, run just before the memory engine's)",
     r"^connect floor \d+ \?user=, before memory$", lambda r: r.get("connect_per_s"), "context", None),
    ("the same, run just before the Redis engine's",
     r"^connect floor \d+ \?user=, before redis$", lambda r: r.get("connect_per_s"), "context", None),
    ("connects/s with HS256 JWTs, memory", r"^memory idle \d+$",
     lambda r: r.get("connect_per_s"), "≥ 19000", lambda v, p: v >= 19000),
    ("connects/s with HS256 JWTs, Redis", r"^redis idle \d+$",
     lambda r: r.get("connect_per_s"), "≥ 19000", lambda v, p: v >= 19000),
]
for engine in ("memory", "redis"):
    TARGETS += [
        (f"server CPU µs/delivery at 50 msgs/s × members, {engine}", rf"^{engine} fanout 1x\d+ 50/s$",
         lambda r: r.get("gateway_cpu_us_per_delivery"), "≤ 5", lambda v, p: v <= 5),
        (f"the same written by a bare loop, no gateway (loopback floor, run just before), {engine}",
         rf"^loopback floor 1x\d+ 50/s, before {engine}$",
         lambda r: r.get("writer_cpu_us_per_delivery"), "context", None),
        (f"p99 latency at 50 msgs/s × members (ms), {engine}", rf"^{engine} fanout 1x\d+ 50/s$",
         lambda r: get(r, "latency_ms", "p99") or None, "≤ 6", lambda v, p: v <= 6),
        (f"the bare loop's p99 (ms), and (p50) its time to write to every member, {engine}",
         rf"^loopback floor 1x\d+ 50/s, before {engine}$",
         lambda r: (f"{get(r, 'latency_ms', 'p99')} ({get(r, 'fanout_ms', 'p50')})"
                    if r.get("latency_ms") else None), "context", None),
        # The members' reader is the fan-out's other serial stage: one thread reads every
        # copy, so a message's last copy is read at least members × this after its first.
        (f"the load generator's CPU µs per delivery it read at 50 msgs/s (× members: its "
         f"least time to read one message's copies), {engine}", rf"^{engine} fanout 1x\d+ 50/s$",
         lambda r: r.get("loadgen_cpu_us_per_delivery"), "context", None),
        (f"the same reading the bare loop's, {engine}", rf"^loopback floor 1x\d+ 50/s, before {engine}$",
         lambda r: r.get("reader_cpu_us_per_delivery"), "context", None),
        # The same pairs read by the raw reader: with the reader no longer the slower
        # stage, the p99 follows the writer (the gateway, or the bare loop) alone.
        (f"read by the raw reader: server CPU µs/delivery at 50 msgs/s, and (p99 ms), {engine}",
         rf"^{engine} fanout 1x\d+ 50/s, raw reader$", cpu_p99("gateway_cpu_us_per_delivery"),
         "context", None),
        (f"the same written by the bare loop, {engine}",
         rf"^loopback floor 1x\d+ 50/s, raw reader, before {engine}$",
         cpu_p99("writer_cpu_us_per_delivery"), "context", None),
        (f"the raw reader's CPU µs per delivery it read (the gateway's copies), {engine}",
         rf"^{engine} fanout 1x\d+ 50/s, raw reader$", lambda r: r.get("loadgen_cpu_us_per_delivery"),
         "context", None),
        (f"server CPU µs/delivery at 200 msgs/s × members, {engine}", rf"^{engine} fanout 1x\d+ 200/s$",
         lambda r: r.get("gateway_cpu_us_per_delivery"), "≤ 2.5", lambda v, p: v <= 2.5),
        (f"saturation deliveries/s, {engine}", rf"^{engine} fanout 1x\d+ max$",
         lambda r: r.get("delivered_per_s"), "no regression",
         lambda v, p: p is None or v >= 0.95 * p),
    ]
TARGETS += [
    ("Redis churn cycles/s", r"^redis churn",
     lambda r: r.get("cycles_per_s"), "≥ 10000", lambda v, p: v >= 10000),
    # A churn that falls short of its rate is bound by the gateway's core: its CPU per cycle
    # beside the memory engine's (the same cycle, no Redis) is what the Redis engine adds.
    ("the gateway's CPU per churn cycle (µs), Redis engine", r"^redis churn",
     lambda r: r.get("gateway_cpu_us_per_cycle"), "context", None),
    ("the same cycle on the memory engine (no Redis), run at the same target rate", r"^memory churn",
     lambda r: r.get("gateway_cpu_us_per_cycle"), "context", None),
    ("the load generator's and redis-server's CPU per cycle (µs; they share the other core)",
     r"^redis churn", core1_per_cycle, "context", None),
    ("Redis commands per churn cycle (INFO commandstats, scripts' own included)", r"^redis churn",
     redis_per_cycle, "stated", lambda v, p: True),
    ("cross-process p99 at 10000 msgs/s (ms)", r"^redis cross-process .*10000/s$",
     lambda r: get(r, "latency_ms", "p99") or None, "≤ 10", lambda v, p: v <= 10),
    ("Redis commands per message (INFO commandstats, whole run)", r"^redis cross-process .*10000/s$",
     redis_per_message, "stated", lambda v, p: True),
    ("redis-server's CPU per message (µs, whole run: both gateways' set-up and idle work too)",
     r"^redis cross-process .*10000/s$", redis_cpu_per_message, "context", None),
]


REPEAT = re.compile(r" \(run (\d+) of \d+\)$")


def matching(table, pattern):
    """The rows of a run (every repeat of it: "(run K of N)" is not part of the pattern)."""
    return [r for r in table
            if re.search(pattern, REPEAT.sub("", r.get("label", ""))) and not r.get("failed")]


def find(table, pattern):
    rows = matching(table, pattern)
    return rows[0] if rows else None


def median(table, pattern, value):
    """The median of a figure over a run's repeats (the lower middle of an even count),
    and every repeat's value when there were several; (None, []) when not measured.
    """
    values = [v for v in (value(r) for r in matching(table, pattern)) if v is not None]
    if not values:
        return None, []
    return lower_middle(values), values


def lower_middle(values):
    """The median of `values`, the lower middle of an even count; None for none. A text
    figure (the floor's "p99 (p50)") is ordered by the number it starts with."""
    ordered = sorted(values, key=lambda v: float(str(v).split()[0]))
    return ordered[(len(ordered) - 1) // 2] if ordered else None


lines += [
    "",
    "## Issue 23 targets",
    "",
    "| figure | target | now | before | met |",
    "|---|---|---|---|---|",
]
def show(v, runs):
    if v is None:
        return "not measured"
    if len(runs) < 2:
        return v
    return f"{v} (median of {', '.join(str(x) for x in runs)})"


for name, pattern, value, target, met in TARGETS:
    v, runs = median(rows, pattern, value)
    p, old_runs = median(previous, pattern, value)
    ok = "" if v is None or met is None else ("yes" if met(v, p) else "**no**")
    lines.append(f"| {name} | {target} | {show(v, runs)} | {show(p, old_runs)} | {ok} |")


def run_no(row):
    m = REPEAT.search(row.get("label", ""))
    return int(m.group(1)) if m else 1


def against_floor(table, figure, floor, how):
    """A gateway figure set against its floor's: each repeat against the floor run of the
    same number (run just before it), the median of those, and every pair's value; the
    medians of both when the runs do not pair up."""
    (pattern, value), (floor_pattern, floor_value) = figure, floor
    floors = {run_no(r): floor_value(r) for r in matching(table, floor_pattern)}
    pairs = [how(g, floors[run_no(r)]) for r in matching(table, pattern)
             if (g := value(r)) is not None and floors.get(run_no(r)) is not None]
    if len(pairs) != len(matching(table, pattern)) or len(floors) != len(pairs):
        (g, _), (f, _) = median(table, *figure), median(table, *floor)
        return (None if g is None or f is None else how(g, f)), []
    return lower_middle(pairs), pairs


# The gateway's figures against the floors measured beside them: what the gateway itself
# adds, which moves less with the machine than the figures do (context, not targets).
# bench/run.sh runs each floor right before the gateway's run of the same number.
minus = lambda g, f: round(g - f, 2)
for engine in ("memory", "redis"):
    p99 = lambda r: get(r, "latency_ms", "p99") or None
    pairs = []
    for a, b in (("", ""), (", raw reader", " (both read by the raw reader)")):
        fanout = rf"^{engine} fanout 1x\d+ 50/s{a}$"
        loop = rf"^loopback floor 1x\d+ 50/s{a}, before {engine}$"
        pairs += [
            (f"50/s µs per delivery over the bare loop's{b}, {engine}",
             (fanout, lambda r: r.get("gateway_cpu_us_per_delivery")),
             (loop, lambda r: r.get("writer_cpu_us_per_delivery")), minus),
            (f"50/s p99 over the bare loop's (ms){b}, {engine}", (fanout, p99), (loop, p99), minus),
        ]
    for name, figure, floor, how in pairs + [
        (f"?user= connects as a share of the connect floor's (%), {engine}",
         (rf"^{engine} idle \d+ \?user=$", lambda r: r.get("connect_per_s")),
         (rf"^connect floor \d+ \?user=, before {engine}$", lambda r: r.get("connect_per_s")),
         lambda g, f: round(100 * g / f)),
    ]:
        (v, runs), (p, old_runs) = (against_floor(rows, figure, floor, how),
                                    against_floor(previous, figure, floor, how))
        lines.append(f"| {name} | context | {show(v, runs)} | {show(p, old_runs)} |  |")


def storm(r):
    if r is None:
        return "not measured"
    return (f"{r['presence_frames']} ({r['presence_frames_per_member']}/member; "
            f"N²/2 = {r['one_per_join_would_be']})")


# Met: linear in N (at most 10 frames per member) and every member heard the last join.
for engine in ("memory", "redis"):
    pattern = rf"^{engine} join storm"
    row, old = find(rows, pattern), find(previous, pattern)
    ok = "" if row is None else (
        "yes" if row["presence_frames"] <= 10 * max(row["members"], 1)
        and row["members_complete"] == row["members"] else "**no**")
    lines.append(f"| presence frames of a 1000-member join storm, {engine} | not O(N²) "
                 f"| {storm(row)} | {storm(old)} | {ok} |")

lines += ["", "A/B figures of single changes, run between full runs: bench/ab.md."]
notes = os.environ.get("BENCH_NOTE")
if notes:
    lines += ["", notes]
text = "\n".join(lines) + "\n"
with open(f"{out}/summary.md", "w") as f:
    f.write(text)
print(text)
