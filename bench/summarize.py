"""Turns chat-loadgen JSON lines (stdin) into bench/results.json and bench/summary.md."""
import json
import sys

out = sys.argv[1]
rows = [json.loads(line) for line in sys.stdin if line.strip()]
with open(f"{out}/results.json", "w") as f:
    json.dump(rows, f, indent=2)


def get(row, *keys):
    for k in keys:
        row = row.get(k) if isinstance(row, dict) else None
    return "" if row is None else row


lines = [
    "# Benchmark summary",
    "",
    "Gateway pinned to core 0, load generator to core 1 (taskset). "
    "How to read it: README, \"Reading the benchmark\".",
    "",
    "| run | rate | latency p50 / p99 / max (ms) | gateway CPU | RSS per conn | drops / errors |",
    "|---|---|---|---|---|---|",
]
for r in rows:
    label = r.get("label", "?")
    if r.get("failed"):
        lines.append(f"| {label} | failed | | | | |")
        continue
    mode = r.get("mode")
    if mode == "idle":
        lines.append(
            f"| {label} | {r['connect_per_s']} conn/s ({r['connections']} held) | | "
            f"| {get(r, 'gateway_rss_per_conn_bytes')} B | {r['errors']} |"
        )
    elif mode == "fanout":
        lat = r["latency_ms"]
        lines.append(
            f"| {label} | {r['delivered_per_s']} delivered/s ({r['published_per_s']} sent/s) "
            f"| {lat['p50']} / {lat['p99']} / {lat['max']} "
            f"| {get(r, 'gateway_cpu_us_per_delivery')} µs/delivery | | {r['drops']} / {r['send_errors']} |"
        )
    elif mode == "churn":
        lines.append(
            f"| {label} | {r['cycles_per_s']} cycles/s | | {get(r, 'gateway_cpu_us_per_cycle')} µs/cycle "
            f"| | {r['errors']} |"
        )
text = "\n".join(lines) + "\n"
with open(f"{out}/summary.md", "w") as f:
    f.write(text)
print(text)
