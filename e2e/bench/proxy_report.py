#!/usr/bin/env python3
"""Summarises e2e/bench/proxy.sh results (JSON lines) as Markdown tables: medians over reps."""
import json
import statistics
import sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = statistics.median
TARGETS = ["direct", "isthmus", "haproxy", "nginx"]
# The L4 comparison: Isthmus carrying the backend's ports as `tcp` byte tunnels, and ztunnel;
# with a PGO build beside the plain one, its chain too.
PRESENT = {r.get("target") for r in rows}
L4 = [t for t in ["isthmus-tcp", "isthmus-pgo", "isthmus-pgo-tcp", "ztunnel"] if t in PRESENT]
NAMES = {"isthmus": "Isthmus", "isthmus-tcp": "Isthmus tcp", "isthmus-pgo": "Isthmus PGO",
         "isthmus-pgo-tcp": "Isthmus PGO tcp", "haproxy": "HAProxy", "nginx": "nginx", "ztunnel": "ztunnel"}

# The saturated cases, in table order: client, body, connections.
CELLS = [(p, b, c) for p in ["h1", "h2"] for b in ["/19", "/1k", "/16k"] for c in [16, 64]]

sat = defaultdict(list)
for r in rows:
    if r["kind"] == "saturated":
        sat[(r["proto"], r["body"], r["conns"], r["target"])].append(r)


def rps_of(proto, body, conns, t):
    return med([x["result"]["rps"] for x in sat[(proto, body, conns, t)]] or [0])


def cpu_of(proto, body, conns, t):
    """Median proxy CPU per request (µs, both hops), 0 without runs."""
    vals = [x["cpu_ms"] * 1000.0 / max(x["result"]["requests"], 1) for x in sat[(proto, body, conns, t)]]
    return med(vals) if vals else 0


print("### Saturated: requests/s and proxy CPU per request (both hops), medians\n")
print("| client | body | conns | direct rps | Isthmus rps | HAProxy rps | nginx rps | Isthmus/HAProxy rps | Isthmus µs CPU/req | HAProxy µs CPU/req | nginx µs CPU/req | Isthmus/HAProxy CPU |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for proto, body, conns in CELLS:
    rps = {t: rps_of(proto, body, conns, t) for t in TARGETS}
    cpu = {t: cpu_of(proto, body, conns, t) for t in TARGETS[1:]}
    rr = rps["isthmus"] / rps["haproxy"] if rps["haproxy"] else 0
    cr = cpu["isthmus"] / cpu["haproxy"] if cpu["haproxy"] else 0
    print(f"| {proto} | {body[1:]} | {conns} | {rps['direct']:.0f} | {rps['isthmus']:.0f} | {rps['haproxy']:.0f} | {rps['nginx']:.0f} | {rr:.2f} | {cpu['isthmus']:.1f} | {cpu['haproxy']:.1f} | {cpu['nginx']:.1f} | {cr:.2f} |")

if L4:
    zt = "ztunnel" in L4
    print(f"\n### {'Against ztunnel' if zt else 'Byte tunnels'}: requests/s and proxy CPU per request (both hops), medians\n")
    print("`isthmus-tcp` is the Isthmus chain above carrying the backend's ports as `tcp`: bytes in an")
    print("HTTP/2 CONNECT stream, no HTTP parsed, as ztunnel carries them (HBONE).")
    if zt:
        print("ztunnel's two hops cross a veth between two network namespaces, the other chains' loopback.")
    print()
    cols = ["isthmus"] + L4
    # CPU ratios to ztunnel: the byte tunnels first (like for like), then HTTP.
    vs_zt = [t for t in ["isthmus-tcp", "isthmus-pgo-tcp", "isthmus", "isthmus-pgo"] if t in cols] if zt else []
    print("| client | body | conns | " + " | ".join(f"{NAMES[t]} rps" for t in cols) + " | "
          + " | ".join(f"{NAMES[t]} µs CPU/req" for t in cols)
          + "".join(f" | {NAMES[t]}/ztunnel CPU" for t in vs_zt) + " |")
    print("|---|---|---:|" + "---:|" * (2 * len(cols) + len(vs_zt)))
    for proto, body, conns in CELLS:
        rps = [f"{rps_of(proto, body, conns, t):.0f}" for t in cols]
        cpu = {t: cpu_of(proto, body, conns, t) for t in cols}
        cells = rps + [f"{cpu[t]:.1f}" for t in cols]
        for t in vs_zt:
            r = cpu[t] / cpu["ztunnel"] if cpu["ztunnel"] and cpu[t] else 0
            cells.append(f"{r:.2f}" if r else "—")
        print(f"| {proto} | {body[1:]} | {conns} | " + " | ".join(cells) + " |")

KU = TARGETS[1:] + L4
print("\n### Where the proxy CPU goes: kernel (TCP, both hops) vs user space, µs per request, medians\n")
print("| client | body | conns | " + " | ".join(f"{NAMES[t]} kernel | {NAMES[t]} user" for t in KU) + " |")
print("|---|---|---:|" + "---:|---:|" * len(KU))
for proto, body, conns in CELLS:
    cells = []
    for t in KU:
        xs = [x for x in sat[(proto, body, conns, t)] if "sys_ms" in x]
        k = med([x["sys_ms"] * 1000.0 / max(x["result"]["requests"], 1) for x in xs]) if xs else 0
        u = med([(x["cpu_ms"] - x["sys_ms"]) * 1000.0 / max(x["result"]["requests"], 1) for x in xs]) if xs else 0
        cells += [f"{k:.1f}", f"{u:.1f}"]
    print(f"| {proto} | {body[1:]} | {conns} | " + " | ".join(cells) + " |")

lat = defaultdict(list)
for r in rows:
    if r["kind"] == "latency":
        lat[(r["proto"], r["target"])].append(r["result"])
print("\n### Fixed rate (2,000 req/s, 1 KiB, 16 connections): latency added over direct, medians over reps\n")
print("| client | target | p50 | p99 | p99.9 | max | requests over 10 ms | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
added_p99 = {}
stalls = {}
for proto in ["h1", "h2"]:
    base = {k: med([x[k] for x in lat[(proto, "direct")]] or [0]) for k in ["p50_us", "p99_us", "p999_us"]}
    for t in TARGETS + L4 + ["isthmus-t1", "isthmus-t100"]:
        xs = lat[(proto, t)]
        if not xs:
            continue
        m = {k: med([x[k] for x in xs]) for k in ["p50_us", "p99_us", "p999_us", "max_us"]}
        over = sum(x["over_10ms"] for x in xs)
        errs = sum(x.get("errors", 0) for x in xs)
        if t == "direct":
            print(f"| {proto} | direct (absolute) | {m['p50_us']} µs | {m['p99_us']} µs | {m['p999_us']} µs | {m['max_us']} µs | {over} | {errs} |")
        else:
            d = {k: m[k] - base[k] for k in ["p50_us", "p99_us", "p999_us"]}
            print(f"| {proto} | {t} | +{d['p50_us']} µs | +{d['p99_us']} µs | +{d['p999_us']} µs | {m['max_us']} µs | {over} | {errs} |")
            added_p99[(proto, t)] = d["p99_us"]
            stalls[(proto, t)] = over

if any(lat[(proto, "ztunnel")] for proto in ["h1", "h2"]):
    print("\nztunnel's added latency includes two crossings of its veth; direct is on loopback.")

hs = defaultdict(list)
for r in rows:
    if r["kind"] == "handshakes":
        hs[r["target"]].append(r)
print("\n### Full mTLS handshakes (server side, new connection each, no resumption)\n")
print("| server | handshakes/s | server CPU ms per s | handshakes per core-second |")
print("|---|---:|---:|---:|")
per_core = {}
for t in ["isthmus", "haproxy", "nginx"]:
    xs = hs[t]
    if not xs:
        continue
    rate = med([x["result"]["per_sec"] for x in xs])
    cpu = med([x["cpu_ms"] / 5.0 for x in xs])
    pc = med([x["result"]["handshakes"] / max(x["cpu_ms"] / 1000.0, 1e-9) for x in xs])
    per_core[t] = pc
    print(f"| {t} | {rate:.0f} | {cpu:.0f} | {pc:.0f} |")

idle = [r for r in rows if r["kind"] == "idle"]
if idle:
    i = idle[-1]
    print(f"\n### 1,000 idle mTLS HTTP/2 connections held open to an Isthmus inbound\n")
    print(f"RSS before {i['rss_kib_before'] / 1024:.1f} MiB, with the connections open {i['rss_kib_with_1000'] / 1024:.1f} MiB ({i['result']}).")

print("\n### Against the targets\n")
# The small-body cells (19 B and 1 KiB; h1 and h2 clients; 16 and 64 connections): where a proxy's
# own work, not copying bytes, decides the cost.
SMALL = [cell for cell in CELLS if cell[1] != "/16k"]


def ratio_range(num, den, of=cpu_of):
    """Median and range of num ÷ den over the small-body cells, or None without both."""
    xs = [of(*cell, num) / of(*cell, den) for cell in SMALL if of(*cell, num) and of(*cell, den)]
    return (med(xs), min(xs), max(xs)) if xs else None


def target_line(what, goal, r, ok):
    if r:
        verdict = "met" if ok(r) else "not met"
        print(f"- {what} ({goal}): median {r[0]:.2f}, range {r[1]:.2f}–{r[2]:.2f}: {verdict}")


for t in ["isthmus", "isthmus-pgo"]:
    limit = 1.0 if t == "isthmus" else 0.8
    target_line(f"small bodies, CPU per request, {NAMES[t]} ÷ HAProxy", f"target ≤ {limit} in every cell",
                ratio_range(t, "haproxy"), lambda r, limit=limit: r[2] <= limit)
target_line("small bodies, CPU per request, Isthmus ÷ ztunnel", "target ≤ 1.0 in every cell",
            ratio_range("isthmus", "ztunnel"), lambda r: r[2] <= 1.0)
target_line("small bodies, requests/s, Isthmus ÷ HAProxy", "target ≥ 1.0 in every cell",
            ratio_range("isthmus", "haproxy", rps_of), lambda r: r[1] >= 1.0)
for t in ["isthmus-tcp", "isthmus-pgo-tcp"]:
    target_line(f"raw TCP, CPU per request, {NAMES[t]} ÷ ztunnel", "target ≤ 1.0 in every cell",
                ratio_range(t, "ztunnel"), lambda r: r[2] <= 1.0)
for proto in ["h1", "h2"]:
    if (proto, "isthmus") in added_p99 and (proto, "haproxy") in added_p99:
        mine, theirs = added_p99[(proto, "isthmus")], added_p99[(proto, "haproxy")]
        ok = mine <= theirs and stalls[(proto, "isthmus")] == 0
        print(f"- added p99 at 2,000 req/s, {proto} (target ≤ HAProxy's, no request over 10 ms): "
              f"+{mine} µs against +{theirs} µs, {stalls[(proto, 'isthmus')]} over 10 ms: {'met' if ok else 'not met'}")
if "isthmus" in per_core:
    print(f"- mTLS handshakes per core-second (stays where it was: 3,209): {per_core['isthmus']:.0f}")
if idle:
    print(f"- RSS with 1,000 idle mTLS connections (stays where it was: 70 MiB): {idle[-1]['rss_kib_with_1000'] / 1024:.1f} MiB")

# Tracing: the Isthmus chain with tracing at 1 % and 100 % against the same chain with tracing off.
TRACED = [t for t in ["isthmus-t1", "isthmus-t100"] if any(r.get("target") == t for r in rows)]
if TRACED:
    print("\n### Tracing: CPU per request and added p99 against tracing off (same run), medians\n")
    print("| client | body | conns | off µs CPU/req | " + " | ".join(f"{t[8:]} µs CPU/req | {t[8:]} vs off" for t in TRACED) + " |")
    print("|---|---|---:|---:|" + "---:|---:|" * len(TRACED))
    for proto, body, conns in CELLS:
        off = cpu_of(proto, body, conns, "isthmus")
        cells = []
        for t in TRACED:
            c = cpu_of(proto, body, conns, t)
            cells += [f"{c:.1f}", f"{(c / off - 1) * 100:+.1f} %" if off else "—"]
        print(f"| {proto} | {body[1:]} | {conns} | {off:.1f} | " + " | ".join(cells) + " |")
    print()
    for proto in ["h1", "h2"]:
        for t in TRACED:
            if (proto, t) in added_p99 and (proto, "isthmus") in added_p99:
                print(f"- added p99 at 2,000 req/s, {proto}, {t[8:]} against off: {added_p99[(proto, t)] - added_p99[(proto, 'isthmus')]:+} µs ({stalls[(proto, t)]} requests over 10 ms)")
