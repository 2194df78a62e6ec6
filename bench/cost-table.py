import json, os, glob
import sys
D=sys.argv[1] if len(sys.argv) > 1 else '/tmp/treaty-cost'
def load(n):
    p=f'{D}/{n}.json'
    if not os.path.exists(p): return None
    return json.load(open(p))
def row(name, r):
    if r is None: return f'| {name} | (failed) | | | | | |'
    return f"| {name} | {r['throughput']:,.0f} | {r['p99Ms']:.1f} | {r['cpuUsPerTx']:,.0f} | {r['rssMb']:.0f} | {r['baselineThroughput']:,.0f} / {r['baselineP99Ms']:.1f} | {r['throughput']/r['baselineThroughput']*100:.0f}% |"
hdr='| run | tx/s | p99 ms | coordinator CPU µs/tx | coordinator RSS MB | baseline tx/s / p99 ms | of baseline |\n|---|---:|---:|---:|---:|---:|---:|'
print('### Saga: concurrency × branches\n'); print(hdr)
for store in ['sqlite','pg']:
    for c in [10,100,1000]:
        for b in [1,3,10]:
            print(row(f"{'SQLite' if store=='sqlite' else 'PostgreSQL'}, {c} clients, {b} branch{'es' if b>1 else ''}", load(f'{store}-saga-c{c}-b{b}')))
print('\n### Every protocol: 64 clients, 3 branches\n'); print(hdr)
for store in ['sqlite','pg']:
    for p in ['tcc','2pc','3pc','msg']:
        print(row(f"{p}, {'SQLite' if store=='sqlite' else 'PostgreSQL'}", load(f'{store}-{p}-c64-b3')))
print('\n### One vs three coordinators on one PostgreSQL (saga, 64 clients, 3 branches), alternating with SQLite\n'); print(hdr)
for r in [1,2]:
    print(row(f'round {r}: PostgreSQL, 1 coordinator', load(f'pg1-r{r}')))
    print(row(f'round {r}: PostgreSQL, 3 coordinators', load(f'pg3-r{r}')))
    print(row(f'round {r}: SQLite, 1 coordinator', load(f'sqlite-r{r}')))
