"""A/B: opta-lmx servers from source snapshots, loads interleaved; tok/s, TTFT, CPU/token.

Used for the issue 5 before/after figures in bench/RESULTS.md (a working aid, not part of the
harness). Each NAME is a copy of the tree at /tmp/ab/NAME/src, run via PYTHONPATH:

    .venv/bin/python bench/results/issue5/ab_interleaved.py before,after 8 1,8,32

Per repetition and level every server gets the same closed-loop load (c=1: 16 requests, else
max(16, 2c)), order alternating each repetition; CPU/token = CPU seconds of the gateway / worker
process / this client divided by generated tokens; events/req = SSE data events per request.
"""
import asyncio, json, os, signal, statistics, subprocess, sys, time, itertools, shutil
import httpx
SNAP = sys.argv[1].split(",")          # e.g. A,B  (dirs /tmp/ab/<name>/src)
REPS = int(sys.argv[2]); LEVELS = [int(x) for x in sys.argv[3].split(",")]
MODEL = "/work/main/bench/.cache/models/tiny-seed0"
VENV = "/work/main/.venv/bin"
_n = itertools.count(1)

def start(name, port):
    home = f"/tmp/ab/home-{name}"; shutil.rmtree(home, ignore_errors=True); os.makedirs(home)
    cfg = f"{home}/cfg.toml"; open(cfg, "w").write(f'[[models]]\nname = "bench"\npath = "{MODEL}"\n')
    env = dict(os.environ, OPTA_LMX_HOME=home, PYTHONPATH=f"/tmp/ab/{name}/src")
    env.update(dict(kv.split("=", 1) for kv in os.environ.get("AB_ENV_" + name, "").split(";") if kv))
    p = subprocess.Popen([f"{VENV}/opta-lmx", "serve", "--config", cfg, "--port", str(port)], env=env,
                         stdout=open(f"{home}/log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(200):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").json()["models"]["bench"] == "RUNNING": break
        except Exception: pass
        time.sleep(0.1)
    kids = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    return p, [int(k) for k in kids]

def cpu(pids):
    t = 0
    for pid in pids:
        try: f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split(); t += int(f[11]) + int(f[12])
        except FileNotFoundError: pass
    return t / os.sysconf("SC_CLK_TCK")

async def one(client, url):
    body = {"model": "bench", "stream": True, "max_tokens": 64, "temperature": 0, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": f"Request {next(_n) % 100000:05d}. You are a helpful assistant. Answer in plain prose."},
                         {"role": "user", "content": "Write a short story about a lighthouse keeper who finds a message in a bottle."}]}
    t0 = time.perf_counter(); ttft = None; toks = 0; buf = b""; events = 0; text = []
    async with client.stream("POST", url, json=body) as r:
        async for data in r.aiter_bytes():
            buf += data
            *evs, buf = buf.split(b"\n\n")
            for line in evs:
                if not line.startswith(b"data: ") or line == b"data: [DONE]": continue
                d = json.loads(line[6:]); events += 1
                if d.get("usage"): toks = d["usage"]["completion_tokens"]
                if d["choices"] and d["choices"][0]["delta"].get("content"):
                    text.append(d["choices"][0]["delta"]["content"])
                    if ttft is None: ttft = time.perf_counter() - t0
    return ttft or 0.0, toks, events

async def level(port, conc, n):
    url = f"http://127.0.0.1:{port}/v1/chat/completions"; left = n; ttfts = []; toks = 0; events = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=conc + 4)) as c:
        async def w():
            nonlocal left, toks, events
            while left > 0:
                left -= 1; t, k, e = await one(c, url); ttfts.append(t); toks += k; events += e
        await one(c, url)
        t0 = time.perf_counter(); await asyncio.gather(*[w() for _ in range(conc)]); wall = time.perf_counter() - t0
    return toks / wall, statistics.median(ttfts) * 1000, toks, events

servers = {}
for i, name in enumerate(SNAP):
    servers[name] = start(name, 8430 + i)
res = {(s, c): [] for s in SNAP for c in LEVELS}
try:
    for rep in range(REPS):
        order = SNAP if rep % 2 == 0 else SNAP[::-1]
        for c in LEVELS:
            for name in order:
                p, kids = servers[name]
                gw, wk = kids[0], kids[1]
                n = max(16, 2 * c) if c > 1 else 16
                a = (cpu([gw]), cpu([wk]), os.times()); tok_s, ttft, toks, events = asyncio.run(level(8430 + SNAP.index(name), c, n))
                b = (cpu([gw]), cpu([wk]), os.times())
                client = (b[2].user + b[2].system) - (a[2].user + a[2].system)
                res[(name, c)].append((tok_s, ttft, (b[0] - a[0]) / toks * 1e6, (b[1] - a[1]) / toks * 1e6, client / toks * 1e6, events / max(1, n)))
        print(f"rep {rep} done", flush=True)
finally:
    for p, _ in servers.values(): os.killpg(p.pid, signal.SIGTERM)
if len(SNAP) == 2:
    x, y = SNAP
    print(f"paired per-rep ratios {y}/{x} (median, all):")
    for c in LEVELS:
        rt = [b[0] / a[0] for a, b in zip(res[(x, c)], res[(y, c)])]
        dt = [b[1] - a[1] for a, b in zip(res[(x, c)], res[(y, c)])]
        print(f"  c={c:2d} tok/s x{statistics.median(rt):.2f} ({' '.join(f'{r:.2f}' for r in rt)}) | TTFT p50 diff {statistics.median(dt):+.1f} ms")
print("server conc | tok/s median (all) | TTFT p50 ms median | CPU us/token: gateway worker client | events/req")
for c in LEVELS:
    for name in SNAP:
        r = res[(name, c)]
        med = lambda k: statistics.median(x[k] for x in r)
        print(f"{name:6s} {c:3d} | ttfts {' '.join(f'{x[1]:.0f}' for x in r)}"); print(f"{name:6s} {c:3d} | {med(0):7.1f} ({' '.join(f'{x[0]:.0f}' for x in r)}) | {med(1):6.1f} | {med(2):6.1f} {med(3):7.1f} {med(4):6.1f} | {med(5):.1f}")
