#!/usr/bin/env python3
"""CPU per application of each run in OUT/<tag>-<i>/cluster.json (see ab.sh): the burst's fishd cores
divided by its apps/s, cluster and single node. Steadier than the ratio: it does not depend on whether
a side is latency-bound. usage: cpu.py OUT"""
import glob, json, os, statistics as st, sys

rows = {}
for d in sorted(glob.glob(sys.argv[1] + '/*-*/')):
    tag = os.path.basename(d.rstrip('/')).rsplit('-', 1)[0]
    try:
        j = json.load(open(d + 'cluster.json'))
    except OSError:
        continue
    c, s = j['cluster']['burst'], j['single']['burst']
    per_app = lambda b: b['fishd_cores'] / b['allocate']['apps_per_s'] * 1000
    rows.setdefault(tag, []).append((per_app(c), c['fishd_cores'], per_app(s), s['fishd_cores']))
for t, r in rows.items():
    med = lambda i: st.median([x[i] for x in r])
    print(f"{t}: cluster core-ms/app {[round(x[0], 2) for x in r]} median {med(0):.2f} ({med(1):.2f} cores); "
          f"single median {med(2):.2f} ({med(3):.2f} cores)")
