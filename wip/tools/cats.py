#!/usr/bin/env python3
"""CPU per application by category from `perf script` output (prof.sh): each sample goes to the
first category one of its frames matches. usage: cats.py PERF_TXT CORE_MS_PER_APP [PERF_TXT CORE_MS ...]
(core-ms/app = a run's fishd cores / apps per s * 1000, from its cluster.md burst table)."""
import sys,re,collections
cats=[('votes (apply)','ballots::'),('reconcile (incl. election)','fishd::reconcile::'),('apply (other)','apply_entries|sm::worker'),('log append','store::raft::db|LogStore|RaftLogStorage'),
('peer/forward','peer_stream|raft_net|fishd::cluster::|Forward'),('store reads/other store','fishd::store::'),('api handlers','fishd::api::|fishd::listener|fishd::auth'),('driver','fishd::drivers::'),('TLS','rustls|tokio_rustls'),
('openraft other','openraft::'),('h2/hyper','h2::|hyper::'),('tokio','tokio::'),]
def load(path):
    samples=[]; cur=None
    for line in open(path,errors='replace'):
        if not line.strip():
            if cur is not None: samples.append(cur); cur=None
            continue
        if not line.startswith((' ','\t')): cur=[]; continue
        if cur is not None:
            parts=line.strip().split(' ',1)
            if len(parts)>1: cur.append(parts[1])
    return samples
res={}
for path,cms in zip(sys.argv[1::2],sys.argv[2::2]):
    S=load(path); c=collections.Counter()
    for s in S:
        for name,p in cats:
            if any(re.search(p,f) for f in s): c[name]+=1; break
        else: c['unattributed (truncated stacks, kernel)']+=1
    res[path]=(len(S),c,float(cms))
names=[n for n,_ in cats]+['unattributed (truncated stacks, kernel)']
print('%-40s'%'category'+''.join('%22s'%p.split('/')[-2][:20] for p in res))
for n in names:
    row='%-40s'%n
    for p,(N,c,cms) in res.items(): row+='%12.1f%% %6.3fms'%(100*c[n]/N, cms*c[n]/N)
    print(row)
