"""bench/summarize.py's pass/fail: a target is met only when every run feeding it ran
clean, and the median of an even count of repeats is the worse middle for the target.
Synthetic runs, no benchmark: `.venv/bin/python -m pytest -p no:cacheprovider -q
bench/test_summarize.py`."""
import sys
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ beside the committed results
sys.path.insert(0, str(Path(__file__).resolve().parent))

import summarize  # noqa: E402


def target(name):
    """summarize's TARGETS entry called `name`."""
    found = [t for t in summarize.TARGETS if t[0] == name]
    assert len(found) == 1, name
    return found[0]


CPU_50 = target("server CPU µs/delivery at 50 msgs/s × members, memory")  # ≤ 5
P99_50 = target("p99 latency at 50 msgs/s × members (ms), memory")  # ≤ 6
JWT_CONNECTS = target("connects/s with HS256 JWTs, memory")  # ≥ 19000, no SYN drops
RSS = target("idle RSS per connection, memory (B)")  # ≤ 4096


def fanout(k=None, n=3, **changes):
    """A clean 50/s fan-out run into 1000 members (repeat k of n when k is given)."""
    label = "memory fanout 1x1000 50/s" + (f" (run {k} of {n})" if k else "")
    row = {"label": label, "mode": "fanout", "members": 1000, "target_rate": 50.0,
           "delivered_per_s": 50000.0, "published_per_s": 50.0, "drops": 0, "send_errors": 0,
           "members_dropped": 0, "gateway_cpu_us_per_delivery": 4.0,
           "latency_ms": {"p50": 2.0, "p90": 4.0, "p99": 5.0, "max": 8.0},
           "send_lag_ms": {"p99": 0.1, "max": 0.4}}
    row.update(changes)
    return row


def idle(k=None, n=3, **changes):
    """A clean JWT idle run of 15000 connections."""
    label = "memory idle 15000" + (f" (run {k} of {n})" if k else "")
    row = {"label": label, "mode": "idle", "connections": 15000, "connections_asked": 15000,
           "errors": 0, "connect_per_s": 25000.0, "gateway_rss_per_conn_bytes": 3900.0,
           "gateway_cpu_us_per_connect": 25.0, "loadgen_cpu_us_per_connect": 26.0,
           "listen_overflows": 0, "listen_drops": 0}
    row.update(changes)
    return row


def met(rows, entry):
    return summarize.judge(rows, [], entry)[4]


def now(rows, entry):
    return summarize.judge(rows, [], entry)[0]


def test_a_clean_run_meets_its_targets():
    assert met([fanout()], CPU_50) == "yes"
    assert met([fanout()], P99_50) == "yes"
    assert met([idle()], JWT_CONNECTS) == "yes"


def test_a_run_with_errors_does_not():
    verdict = met([fanout(send_errors=3)], CPU_50)
    assert verdict.startswith("**no**") and "3 send errors" in verdict
    verdict = met([idle(errors=3, connections=14997)], JWT_CONNECTS)
    assert verdict.startswith("**no**")
    assert "3 errors" in verdict and "14997 of 15000 connections" in verdict


def test_a_run_without_the_figure_does_not():
    # A gateway gone before the end: no CPU reading, no RSS.
    assert met([fanout(gateway_cpu_us_per_delivery=None)], CPU_50).startswith("**no**")
    assert met([idle(gateway_rss_per_conn_bytes=None)], RSS).startswith("**no**")
    # No delivery at all: no p99.
    assert met([fanout(latency_ms={"p50": None, "p99": None, "max": None})], P99_50) \
        .startswith("**no**")


def test_one_bad_repeat_fails_the_target_whatever_the_others():
    rows = [fanout(1), fanout(2, gateway_cpu_us_per_delivery=None), fanout(3)]
    verdict = met(rows, CPU_50)
    assert verdict == "**no** (run 2: not measured)"
    rows = [fanout(1), {"label": "memory fanout 1x1000 50/s (run 2 of 3)", "failed": True},
            fanout(3)]
    assert met(rows, CPU_50) == "**no** (run 2: failed)"


def test_lost_deliveries_and_members_fail_it():
    assert "5 drops" in met([fanout(drops=5)], CPU_50)
    assert "2 members dropped" in met([fanout(members_dropped=2)], CPU_50)
    # More than 2 % short of 50/s × 1000 members; 1 % short is within it.
    assert "48000 of 50000 deliveries/s" in met([fanout(delivered_per_s=48000.0)], CPU_50)
    assert met([fanout(delivered_per_s=49500.0)], CPU_50) == "yes"


def test_syn_drops_fail_the_connect_targets_only():
    rows = [idle(listen_overflows=4, listen_drops=4)]
    assert "SYN drops" in met(rows, JWT_CONNECTS)
    assert met(rows, RSS) == "yes"
    assert "SYN drops not measured" in met([idle(listen_drops=None)], JWT_CONNECTS)


def test_an_even_count_takes_the_worse_middle():
    # Two repeats left of three: for a "≤" target the higher of the two middles.
    rows = [fanout(1, gateway_cpu_us_per_delivery=4.0), fanout(2, gateway_cpu_us_per_delivery=4.8)]
    assert now(rows, CPU_50) == 4.8
    # For a "≥" target the lower.
    rows = [idle(1, connect_per_s=30000.0), idle(2, connect_per_s=20000.0)]
    assert now(rows, JWT_CONNECTS) == 20000.0
    # An odd count: the middle either way.
    rows += [idle(3, connect_per_s=25000.0)]
    assert now(rows, JWT_CONNECTS) == 25000.0


def test_a_failed_figure_is_worse_even_when_the_rest_meet_it():
    # The lower middle of (4.0, 5.5) met "≤ 5" before; the worse middle does not.
    rows = [fanout(1, gateway_cpu_us_per_delivery=4.0), fanout(2, gateway_cpu_us_per_delivery=5.5)]
    assert met(rows, CPU_50) == "**no**"


def test_redis_per_message_divides_window_totals_by_the_windows_messages():
    row = {"published_in_window": 100000, "redis_commands_in_window": 995000,
           "redis_cpu_us_in_window": 3900000}
    assert summarize.redis_per_message(row) == 9.95
    assert summarize.redis_cpu_per_message(row) == 39.0
    assert summarize.redis_per_message({"published_in_window": 0,
                                        "redis_commands_in_window": 5}) is None


def test_the_run_table_shows_the_syn_drops_and_the_send_lag():
    lines = summarize.run_table([idle(listen_overflows=1, listen_drops=2), fanout()])
    assert "listen overflows / drops 1 / 2" in lines[-2]
    assert "sent behind schedule p99 / max 0.1 / 0.4" in lines[-1]
