#!/usr/bin/env python3
"""Cluster DNS for the local cluster without CoreDNS: keeps a hosts file of every Service
(NAME.NS.svc.cluster.local and NAME.NS.svc -> ClusterIP; headless Services -> the ready
endpoint addresses) in sync with the API server. dnsmasq serves it (--hostsdir re-reads
the file when it changes). Started and stopped by cluster.sh.

    dns-sync.py SERVER CA CLIENT_CERT CLIENT_KEY HOSTS_FILE"""
import json
import os
import ssl
import sys
import time
import urllib.request


def fetch(ctx, server, path):
    with urllib.request.urlopen(server + path, context=ctx, timeout=10) as resp:
        return json.load(resp)["items"]


def render(services, endpoints):
    ready = {}
    for ep in endpoints:
        key = (ep["metadata"]["namespace"], ep["metadata"]["name"])
        ready[key] = sorted({a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []})
    lines = []
    for svc in services:
        ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
        ip = svc["spec"].get("clusterIP")
        ips = ready.get((ns, name), []) if ip in (None, "", "None") else [ip]
        for addr in ips:
            lines.append(f"{addr} {name}.{ns}.svc.cluster.local {name}.{ns}.svc")
    return "".join(line + "\n" for line in sorted(lines))


def main():
    server, ca, cert, key, hosts = sys.argv[1:6]
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    last = None
    while True:
        try:
            text = render(fetch(ctx, server, "/api/v1/services"), fetch(ctx, server, "/api/v1/endpoints"))
            if text != last:
                # Written beside the watched directory, then renamed into it.
                tmp = os.path.join(os.path.dirname(os.path.dirname(hosts)), ".dns-hosts.tmp")
                with open(tmp, "w") as f:
                    f.write(text)
                os.replace(tmp, hosts)
                last = text
        except Exception as e:  # noqa: BLE001 - the API server may restart; keep going
            print(f"dns-sync: {e}", file=sys.stderr, flush=True)
        time.sleep(1)


if __name__ == "__main__":
    main()
