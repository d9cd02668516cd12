#!/usr/bin/env python3
"""Issue 20's numbers for the EKS source: events/s read from CloudWatch Logs, and the delay
from an event appearing in CloudWatch to its finding, with the default polling settings.

Runs against moto in server mode (scripts/test installs it in target/moto):

    target/moto/bin/python scripts/bench-eks.py [--events 50000] [--probes 20] [--poll 5s]

It starts moto and `kustody serve --eks-cluster bench` (target/release/kustody, else
target/debug/kustody), puts the events into /aws/eks/bench/cluster, waits until kustody has
stored them all (events/s, from the first to the last stored), then puts one exec event at a
time and measures until its finding is in the store (p50, p90, max). moto answers slower than
CloudWatch and holds everything in one Python process: the rate is a floor for kustody's side.
"""
import argparse, json, os, random, shutil, socket, ssl, subprocess, sys, tempfile, time, urllib.request

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def event(i, ms, user="alice", sub=None, stage="ResponseComplete"):
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".%03dZ" % (ms % 1000)
    obj = {"resource": "pods", "namespace": "shop", "name": "web-%d" % (i % 50)}
    if sub:
        obj["subresource"] = sub
    return json.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "auditID": "bench-%d" % i,
                       "stage": stage, "requestURI": "/api/v1/namespaces/shop/pods", "verb": "create" if sub else "get",
                       "user": {"username": user, "groups": ["system:authenticated"]}, "sourceIPs": ["10.0.0.9"],
                       "userAgent": "kubectl/v1.36.0", "objectRef": obj, "responseStatus": {"code": 200},
                       "requestReceivedTimestamp": t, "stageTimestamp": t}, separators=(",", ":"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50000)
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--poll", default="5s")
    a = ap.parse_args()
    binary = next((p for p in (os.path.join(ROOT, "target/release/kustody"), os.path.join(ROOT, "target/debug/kustody")) if os.path.exists(p)), None)
    if not binary:
        sys.exit("build kustody first (cargo build --release)")
    tmp = tempfile.mkdtemp(prefix="kustody-bench-eks-")
    mport = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(mport)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "http://127.0.0.1:%d" % mport
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", mport), 0.2).close(); break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="AKIDBENCH", AWS_SECRET_ACCESS_KEY="bench")
    logs = boto3.client("logs", endpoint_url=url, region_name="eu-west-1")
    group = "/aws/eks/bench/cluster"
    logs.create_log_group(logGroupName=group)
    for s in ("kube-apiserver-audit-a", "kube-apiserver-audit-b"):
        logs.create_log_stream(logGroupName=group, logStreamName=s)
    now = int(time.time() * 1000)
    base = now - 30 * 60 * 1000
    batch = []
    for i in range(a.events):
        batch.append({"timestamp": base + i * (25 * 60 * 1000) // max(a.events, 1), "message": event(i, base + i)})
        if len(batch) == 5000 or i == a.events - 1:
            logs.put_log_events(logGroupName=group, logStreamName="kube-apiserver-audit-%s" % "ab"[i // 5000 % 2], logEvents=batch)
            batch = []
    token = "bench-token-0123456789abcdef"
    tokens = os.path.join(tmp, "tokens"); open(tokens, "w").write("%s bench admin\n" % token); os.chmod(tokens, 0o600)
    ready = os.path.join(tmp, "ready")
    srv = subprocess.Popen([binary, "serve", "--data-dir", os.path.join(tmp, "data"), "--listen", "127.0.0.1:0", "--tokens", tokens,
                            "--ready-file", ready, "--eks-cluster", "bench", "--aws-region", "eu-west-1", "--aws-endpoint", url,
                            "--eks-poll", a.poll, "--eks-since", "1h"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()
        while not (os.path.exists(ready) and open(ready).read().endswith("\n")):
            time.sleep(0.05)
        api = open(ready).read().strip()
        ctx = ssl.create_default_context(cafile=os.path.join(tmp, "data/tls/server.crt"))
        ctx.check_hostname = False

        def get(path):
            req = urllib.request.Request(api + path, headers={"Authorization": "Bearer " + token})
            return urllib.request.urlopen(req, context=ctx).read().decode()

        def metric(name):
            for line in get("/metrics").splitlines():
                if line.startswith(name):
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        first = None
        while True:
            n = metric('kustody_source_events_total{source="eks:eu-west-1:bench"}')
            if n > 0 and first is None:
                first = (time.time(), n)
            if n >= a.events:
                break
            time.sleep(0.05)
        t1 = time.time()
        rate = (n - first[1]) / max(t1 - first[0], 1e-9)
        print("events read and stored: %d in %.2f s from start (%.0f events/s from the first stored to the last)" % (n, t1 - t0, rate))
        delays = []
        for p in range(a.probes):
            ms = int(time.time() * 1000)
            i = 10_000_000 + p
            logs.put_log_events(logGroupName=group, logStreamName="kube-apiserver-audit-a",
                                logEvents=[{"timestamp": ms, "message": event(i, ms, "system:serviceaccount:shop:bench%d" % p, "exec", "ResponseStarted")}])
            put = time.time()
            while "bench-%d" % i not in get("/v1/findings?user=system:serviceaccount:shop:bench%d" % p):
                time.sleep(0.02)
            delays.append(time.time() - put)
            time.sleep(random.uniform(0.1, 5.0))  # probes at random phases of the poll
        delays.sort()
        q = lambda f: delays[min(len(delays) - 1, int(f * len(delays)))]
        print("event in CloudWatch -> finding stored (poll %s, %d probes): p50 %.2f s, p90 %.2f s, max %.2f s" % (a.poll, len(delays), q(0.5), q(0.9), delays[-1]))
    finally:
        srv.terminate(); srv.wait()
        moto.terminate(); moto.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
