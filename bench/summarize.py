"""Turns chat-loadgen JSON lines (stdin) into bench/results.json and bench/summary.md.

The summary puts every figure of issue 23's target list beside the same figure of the
previous bench/results.json (read before it is overwritten), with the load average of the
machine before each run: the benchmark shares the machine with whatever else runs on it.
A target is met only when every run feeding it ran clean (bench/test_summarize.py).
"""
import json
import os
import re
import sys


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


def run_table(rows):
    """The table of every run, a row each."""
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
                f"| {label} | {r['connect_per_s']} conn/s ({r['connections']} held{syn_drops(r)}) | "
                f"| {get(r, 'gateway_cpu_us_per_connect')} µs/connect "
                f"(load generator {get(r, 'loadgen_cpu_us_per_connect')}) "
                f"| {get(r, 'gateway_rss_per_conn_bytes')} B | {r['errors']} | {load} |"
            )
        elif mode == "fanout":
            lat = r["latency_ms"]
            lines.append(
                f"| {label} | {r['delivered_per_s']} delivered/s ({r['published_per_s']} sent/s) "
                f"| {lat['p50']} / {lat['p99']} / {lat['max']}{send_lag(r)} "
                f"| {get(r, 'gateway_cpu_us_per_delivery')} µs/delivery "
                f"(load generator {get(r, 'loadgen_cpu_us_per_delivery')}) | | {r['drops']} / {r['send_errors']} "
                f"| {load} |"
            )
        elif mode == "floor":
            lat, span = r["latency_ms"], r["fanout_ms"]
            lines.append(
                f"| {label} | {get(r, 'written_per_s')} written/s, no gateway "
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
    return lines


def syn_drops(r):
    """An idle row's SYN drops during its connect phase (the kernel's TcpExt counters,
    machine-wide), when the row has them."""
    if "listen_overflows" not in r:
        return ""
    lo, ld = r.get("listen_overflows"), r.get("listen_drops")
    if lo is None or ld is None:
        return "; SYN drops not read"
    return f"; listen overflows / drops {lo} / {ld}"


def send_lag(r):
    """A fan-out row's sender lag behind its schedule (p99 / max, ms): context for its
    latency, which is stamped when a message is actually sent."""
    lag = r.get("send_lag_ms")
    if not isinstance(lag, dict):
        return ""
    return f" (sent behind schedule p99 / max {get(lag, 'p99')} / {get(lag, 'max')})"


def per_message(r, key, digits):
    """A Redis figure of the measured window (`redis_commands_in_window`,
    `redis_cpu_us_in_window`, read by the load generator at the window's start and end)
    per message acknowledged in that same window."""
    n, msgs = r.get(key), r.get("published_in_window")
    return round(n / msgs, digits) if n is not None and msgs else None


def redis_per_message(r):
    return per_message(r, "redis_commands_in_window", 2)


def redis_cpu_per_message(r):
    return per_message(r, "redis_cpu_us_in_window", 1)


def redis_per_cycle(r):
    n, cycles = r.get("redis_commands"), r.get("cycles")
    return round(n / cycles, 2) if n is not None and cycles else None


def cpu_p99(cpu):
    """A fan-out row's CPU per delivery (the key `cpu`) with its p99: "4.2 (5.1)"."""
    return lambda r: (f"{r[cpu]} ({get(r, 'latency_ms', 'p99')})"
                      if r.get(cpu) is not None and r.get("latency_ms") else None)


# A connect target's runs must also have dropped no SYN (the 6th field of its entry).
SYN = "no SYN drops"

# (figure, label pattern, value of a row, target text, met(value, previous value)[, SYN])
TARGETS = [
    ("idle RSS per connection, memory (B)", r"^memory idle \d+$",
     lambda r: r.get("gateway_rss_per_conn_bytes"), "≤ 4096", lambda v, p: v <= 4096),
    ("idle RSS per connection, Redis (B)", r"^redis idle \d+$",
     lambda r: r.get("gateway_rss_per_conn_bytes"), "≤ 5120", lambda v, p: v <= 5120),
    ("connects/s with ?user=, memory", r"^memory idle \d+ \?user=$",
     lambda r: r.get("connect_per_s"), "≥ 25000", lambda v, p: v >= 25000, SYN),
    ("connects/s with ?user=, Redis", r"^redis idle \d+ \?user=$",
     lambda r: r.get("connect_per_s"), "≥ 25000", lambda v, p: v >= 25000, SYN),
    ("the same against a bare endpoint, no gateway (connect floor, run just before the memory engine's)",
     r"^connect floor \d+ \?user=, before memory$", lambda r: r.get("connect_per_s"), "context", None),
    ("the same, run just before the Redis engine's",
     r"^connect floor \d+ \?user=, before redis$", lambda r: r.get("connect_per_s"), "context", None),
    ("connects/s with HS256 JWTs, memory", r"^memory idle \d+$",
     lambda r: r.get("connect_per_s"), "≥ 19000", lambda v, p: v >= 19000, SYN),
    ("connects/s with HS256 JWTs, Redis", r"^redis idle \d+$",
     lambda r: r.get("connect_per_s"), "≥ 19000", lambda v, p: v >= 19000, SYN),
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
    # Both over the measured window: Redis' totals and the messages acknowledged in it
    # (the load generator reads INFO and redis-server's CPU at the window's start and end).
    ("Redis commands per message (INFO commandstats, measured window)", r"^redis cross-process .*10000/s$",
     redis_per_message, "stated", lambda v, p: True),
    ("redis-server's CPU per message (µs, measured window: both gateways' idle work too)",
     r"^redis cross-process .*10000/s$", redis_cpu_per_message, "context", None),
]


REPEAT = re.compile(r" \(run (\d+) of \d+\)$")


def matching(table, pattern, failed_too=False):
    """The rows of a run (every repeat of it: "(run K of N)" is not part of the pattern);
    the runs that failed outright too with `failed_too`."""
    return [r for r in table
            if re.search(pattern, REPEAT.sub("", r.get("label", "")))
            and (failed_too or not r.get("failed"))]


def find(table, pattern):
    rows = matching(table, pattern)
    return rows[0] if rows else None


def worse_first(target):
    """Whether the higher of two values is the worse for `target`: "≤ N" targets."""
    return target.startswith("≤")


def median(table, pattern, value, target=""):
    """The median of a figure over a run's repeats and every repeat's value when there
    were several; (None, []) when not measured. Of an even count (a repeat left no value),
    the worse middle for the target: the upper for a "≤" target, the lower otherwise.
    """
    values = [v for v in (value(r) for r in matching(table, pattern)) if v is not None]
    if not values:
        return None, []
    return middle(values, upper=worse_first(target)), values


def number(v):
    """A figure's number: a text figure (the floor's "p99 (p50)") is ordered by the number
    it starts with."""
    return float(str(v).split()[0])


def middle(values, upper=False):
    """The median of `values`: of an even count, the upper middle with `upper`, the lower
    otherwise; None for none."""
    ordered = sorted(values, key=number)
    if not ordered:
        return None
    return ordered[len(ordered) // 2 if upper else (len(ordered) - 1) // 2]


def lower_middle(values):
    return middle(values)


# A run's own counts of what went wrong: (JSON field, what it counts). Any of them above
# zero and the run's figures do not count toward a target (they would flatter it: a run
# that lost connections or messages did less work than asked).
FAULTS = [
    ("errors", "errors"),
    ("send_errors", "send errors"),
    ("write_errors", "write errors"),
    ("drops", "drops"),
    ("members_dropped", "members dropped"),
]


def faults(r, value, syn=False):
    """Why run `r` cannot count toward a target whose figure is `value(r)`: a short
    reason each ("run 2: 14 errors"); none when it ran clean. `syn`: the target also wants
    no SYN dropped while connecting."""
    run = f"run {run_no(r)}"
    if r.get("failed"):
        return [f"{run}: failed"]
    why = []
    if value(r) is None:
        why.append(f"{run}: not measured")
    for key, what in FAULTS:
        if r.get(key):
            why.append(f"{run}: {r[key]} {what}")
    asked = r.get("connections_asked")
    if asked is not None and (r.get("connections") or 0) < asked:
        why.append(f"{run}: {r.get('connections')} of {asked} connections")
    # A fan-out at a rate delivers rate × members a second (each message to one room):
    # short of it by more than 2 %, the gateway (or the generator) did not keep up.
    rate, members = r.get("target_rate"), r.get("members")
    if r.get("mode") == "fanout" and rate and members:
        want, got = rate * members, r.get("delivered_per_s") or 0
        if got < 0.98 * want:
            why.append(f"{run}: {got:g} of {want:g} deliveries/s")
    if syn:
        lo, ld = r.get("listen_overflows"), r.get("listen_drops")
        if lo is None or ld is None:
            why.append(f"{run}: SYN drops not measured")
        elif lo or ld:
            why.append(f"{run}: SYN drops (listen overflows {lo}, drops {ld})")
    return why


def verdict(why, ok):
    """The "met" column: "**no**" with the reasons when a run failed, the runs of one
    reason together ("run 1, 3: SYN drops not measured"), the first three reasons."""
    if why:
        runs = {}
        for w in why:
            run, _, reason = w.partition(": ")
            runs.setdefault(reason, []).append(run.removeprefix("run "))
        said = [f"run {', '.join(r)}: {reason}" for reason, r in runs.items()]
        more = f"; {len(said) - 3} more" if len(said) > 3 else ""
        return f"**no** ({'; '.join(said[:3])}{more})"
    return "yes" if ok else "**no**"


def judge(table, previous, entry):
    """One target: its figure now (median, every run's value), before, and met: blank for
    a figure with no target or no run; "**no**" when any run feeding it failed."""
    name, pattern, value, target, met, *rest = entry
    v, runs = median(table, pattern, value, target)
    p, old_runs = median(previous, pattern, value, target)
    rows = matching(table, pattern, failed_too=True)
    if met is None or not rows:
        return v, runs, p, old_runs, ""
    why = [w for r in rows for w in faults(r, value, syn=SYN in rest)]
    return v, runs, p, old_runs, verdict(why, not why and met(v, p))


def show(v, runs):
    if v is None:
        return "not measured"
    if len(runs) < 2:
        return v
    return f"{v} (median of {', '.join(str(x) for x in runs)})"


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


def storm(r):
    if r is None:
        return "not measured"
    return (f"{r['presence_frames']} ({r['presence_frames_per_member']}/member; "
            f"N²/2 = {r['one_per_join_would_be']})")


def target_table(rows, previous):
    """The issue 23 targets, each beside the previous results' figure."""
    lines = [
        "",
        "## Issue 23 targets",
        "",
        "| figure | target | now | before | met |",
        "|---|---|---|---|---|",
    ]
    for entry in TARGETS:
        v, runs, p, old_runs, ok = judge(rows, previous, entry)
        name, target = entry[0], entry[3]
        lines.append(f"| {name} | {target} | {show(v, runs)} | {show(p, old_runs)} | {ok} |")

    # The gateway's figures against the floors measured beside them: what the gateway
    # itself adds, which moves less with the machine than the figures do (context, not
    # targets). bench/run.sh runs each floor right before the gateway's run of the same
    # number.
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

    # Met: linear in N (at most 10 frames per member), every member heard the last join,
    # and the run itself ran clean.
    for engine in ("memory", "redis"):
        pattern = rf"^{engine} join storm"
        row, old = find(rows, pattern), find(previous, pattern)
        runs = matching(rows, pattern, failed_too=True)
        why = [w for r in runs for w in faults(r, lambda r: r.get("presence_frames"))]
        ok = "" if not runs else verdict(
            why, row is not None and row["presence_frames"] <= 10 * max(row["members"], 1)
            and row["members_complete"] == row["members"])
        lines.append(f"| presence frames of a 1000-member join storm, {engine} | not O(N²) "
                     f"| {storm(row)} | {storm(old)} | {ok} |")
    return lines


def main():
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
    lines = run_table(rows) + target_table(rows, previous)
    lines += ["", "A/B figures of single changes, run between full runs: bench/ab.md."]
    notes = os.environ.get("BENCH_NOTE")
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    with open(f"{out}/summary.md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
