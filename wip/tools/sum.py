#!/usr/bin/env python3
"""Summary of cluster-benchmark runs: OUT/<tag>-<i>/cluster.{json,md} per run (see ab.sh).
Per tag: ratio (median, mean, each run), cluster and single apps/s, one-at-a-time p50, and the
burst's create p50 on the leader vs the followers (the forwarding gap), and the CPU per application of
each burst (fishd cores / apps/s: steadier than the ratio, as it does not depend on whether a side is
latency-bound)."""
import glob, json, os, re, statistics as st, sys

rows = {}
for d in sorted(glob.glob(sys.argv[1] + '/*-*/')):
    tag = os.path.basename(d.rstrip('/')).rsplit('-', 1)[0]
    try:
        md = open(d + 'cluster.md').read()
        j = json.load(open(d + 'cluster.json'))
    except OSError:
        continue
    m = re.search(r'\| cluster burst throughput.*?\| (\d+)% \((\d+) vs (\d+)', md)
    p = re.search(r'\| cluster p50 create.*?\| ([\d.]+) ms', md)
    lead = re.search(r'\(leader (\w).*?\): (.*)\.', md)
    gap = None
    if lead:
        vals = {k: float(v) for k, v in re.findall(r'(\w) ([\d.]+) /', lead.group(2))}
        fol = [v for k, v in vals.items() if k != lead.group(1)]
        gap = (vals[lead.group(1)], sum(fol) / len(fol))
    per_app = lambda b: b['fishd_cores'] / b['allocate']['apps_per_s'] * 1000
    cpu = (per_app(j['cluster']['burst']), per_app(j['single']['burst']))
    lo = j.get('leader_only')
    lead_only = lo and 100 * lo['burst']['allocate']['apps_per_s'] / j['single']['burst']['allocate']['apps_per_s']
    rows.setdefault(tag, []).append((int(m.group(1)), int(m.group(2)), int(m.group(3)), float(p.group(1)),
                                     j['cluster'].get('burst_log_entries_per_app'), gap, cpu, lead_only))
for t, r in rows.items():
    med = lambda i: st.median([x[i] for x in r])
    print(f"{t}: {len(r)} runs, ratio median {med(0):.1f} mean {st.mean([x[0] for x in r]):.1f} "
          f"{[x[0] for x in r]}; cluster {med(1):.0f} single {med(2):.0f} apps/s; p50 {med(3):.1f} ms")
    g = [x[5] for x in r if x[5]]
    if g:
        print(f"   burst create p50: leader {st.median([a for a, _ in g]):.1f} ms, "
              f"followers {st.median([b for _, b in g]):.1f} ms")
    print(f"   core-ms/app: cluster {[round(x[6][0], 2) for x in r]} median {st.median([x[6][0] for x in r]):.2f}, "
          f"single median {st.median([x[6][1] for x in r]):.2f}")
    lo = [x[7] for x in r if x[7]]
    if lo:
        print(f"   every connection on the leader (f511e12+): ratio median {st.median(lo):.1f} {[round(x) for x in lo]}")
