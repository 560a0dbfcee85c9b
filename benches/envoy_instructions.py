#!/usr/bin/env python3
"""Envoy's instructions per healthy request, listener by listener.

The reference bootstrap (envoy-config/standalone/envoy.yaml) with its
baseline listener ("Envoy alone"), its mulligan listener ("as shipped") and
copies of the mulligan listener with parts of the wiring taken out, all in
one Envoy (--concurrency 1) run under callgrind, in front of a second Envoy
that answers 200 itself. Each row: instructions Envoy ran per request (wrk,
4 connections), and Envoy alone's figure divided by it.

Why instructions and not requests per second: on a shared 2-core machine
the throughput ratio of two listeners moves by 20 points from run to run;
instructions per request move by about 1%, and they are what Envoy's
worker spends at saturation (kernel time aside, which is the same for all).

Needs valgrind (callgrind_control) and wrk.
    python3 benches/envoy_instructions.py [--seconds 5] [--rounds 3] [--envoy PATH]
"""

import argparse, copy, glob, os, re, subprocess, sys, tempfile, time, urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_PORT, ADMIN_PORT, BASELINE_PORT, FIRST_PORT = 18080, 19901, 10001, 10010

UPSTREAM = f"""
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {ADMIN_PORT + 1}}}}}}}
static_resources:
  listeners:
  - name: pod
    address: {{socket_address: {{address: 127.0.0.1, port_value: {UPSTREAM_PORT}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: pod
          route_config:
            virtual_hosts:
            - {{name: pod, domains: ["*"], routes: [{{match: {{prefix: "/"}}, direct_response: {{status: 200, body: {{inline_string: ok}}}}}}]}}
          http_filters:
          - {{name: envoy.filters.http.router, typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}
"""


def render():
    """The reference bootstrap with every ${NAME} filled in (its default)."""
    text = open(os.path.join(ROOT, "envoy-config/standalone/envoy.yaml")).read()
    fixed = {
        "ADMIN_PORT": str(ADMIN_PORT),
        "LISTEN_PORT": "10000",
        "BASELINE_PORT": str(BASELINE_PORT),
        "APP_ENDPOINTS": "[{endpoint: {address: {socket_address: "
        "{address: 127.0.0.1, port_value: %d}}}}]" % UPSTREAM_PORT,
    }
    text = re.sub(
        r"\$\{([A-Z_]+)(:-([^}]*))?\}",
        lambda m: fixed.get(m.group(1), m.group(3) or ""),
        text,
    )
    cfg = yaml.safe_load(text)
    # No stats flush during a measurement (it runs on the main thread).
    cfg["stats_flush_interval"] = "299s"
    return cfg


def hcm_filters(listener):
    return listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]


def upstream_filters(cluster):
    options = cluster["typed_extension_protocol_options"]
    return options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["http_filters"]


def without(names):
    def cut(listener, cluster):
        hcm_filters(listener)[:] = [f for f in hcm_filters(listener) if f["name"] not in names]
        upstream_filters(cluster)[:] = [
            f for f in upstream_filters(cluster) if f["name"] not in names
        ]

    return cut


VARIANTS = [
    ("as shipped", lambda l, c: None),
    ("without mulligan.final", without({"mulligan.final"})),
    ("without mulligan.attempt", without({"mulligan.attempt"})),
    ("without mulligan.strip", without({"mulligan.strip"})),
    ("without mulligan's filters", without({"mulligan.final", "mulligan.attempt", "mulligan.strip"})),
]


def build(cfg):
    """One listener and one app cluster per variant, beside the originals."""
    res = cfg["static_resources"]
    listener = next(l for l in res["listeners"] if l["name"] == "mulligan")
    cluster = next(c for c in res["clusters"] if c["name"] == "app")
    ports = []
    for i, (name, change) in enumerate(VARIANTS):
        l, c = copy.deepcopy(listener), copy.deepcopy(cluster)
        tag = f"variant_{i}"
        l["name"] = tag
        l["address"]["socket_address"]["port_value"] = FIRST_PORT + i
        hcm = l["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = tag
        for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
            route["route"]["cluster"] = tag
        c["name"] = c["load_assignment"]["cluster_name"] = tag
        change(l, c)
        res["listeners"].append(l)
        res["clusters"].append(c)
        ports.append((name, FIRST_PORT + i))
    return ports


def wait_ready(url, bound_s):
    deadline = time.time() + bound_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.5)
    sys.exit(f"{url} not ready after {bound_s} s")


def wrk(port, seconds):
    out = subprocess.run(
        ["wrk", "-t1", "-c4", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        sys.exit(f"port {port}: {non_2xx.group(1)} answers were not 2xx")
    return int(re.search(r"(\d+) requests in", out).group(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--envoy", default=os.environ.get("ENVOY_BIN", os.path.join(ROOT, ".tools/envoy/envoy/_bin/envoy")))
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="envoy-instructions-")
    cfg = render()
    rows = [("Envoy alone (baseline listener)", BASELINE_PORT)] + build(cfg)
    open(f"{tmp}/envoy.yaml", "w").write(yaml.safe_dump(cfg, sort_keys=False))
    open(f"{tmp}/pod.yaml", "w").write(UPSTREAM)
    envoy = [a.envoy, "--concurrency", "1", "-l", "error", "--disable-hot-restart"]
    pod = subprocess.Popen(envoy + ["-c", f"{tmp}/pod.yaml"], stderr=subprocess.DEVNULL)
    under = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={tmp}/cg.%p"]
        + envoy + ["-c", f"{tmp}/envoy.yaml"],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{ADMIN_PORT}/ready", 300)
        wait_ready(f"http://127.0.0.1:{UPSTREAM_PORT}/", 30)
        ctl = lambda op: subprocess.run(["callgrind_control", op, str(under.pid)], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-i", "on", str(under.pid)], capture_output=True, check=True)
        for _, port in rows:
            wrk(port, 2)  # warm-up: connections, pools, caches
        per = {port: [] for _, port in rows}
        for _ in range(a.rounds):
            for _, port in rows:
                ctl("-z")
                n = wrk(port, a.seconds)
                ctl("-d")
                dump = max(glob.glob(f"{tmp}/cg.{under.pid}.*"), key=os.path.getmtime)
                total = int(re.search(r"^totals: (\d+)", open(dump).read(), re.M).group(1))
                os.remove(dump)
                per[port].append(total / n)
        base = sum(per[BASELINE_PORT]) / a.rounds
        print(f"\n| listener | instructions per request (runs) | Envoy alone / this |\n|---|---:|---:|")
        for name, port in rows:
            mean = sum(per[port]) / a.rounds
            runs = " / ".join(f"{x / 1000:.1f}k" for x in per[port])
            print(f"| {name} | {mean / 1000:.1f}k ({runs}) | {base / mean:.3f} |")
    finally:
        under.terminate()
        pod.terminate()
        under.wait()
        pod.wait()


if __name__ == "__main__":
    main()
