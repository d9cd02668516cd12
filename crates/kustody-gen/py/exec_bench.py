"""The same small-exec sequence through the Python `kubernetes` client (the SDK seed 000's
vendor started from), sequential and with a thread pool, for side-by-side ratios.

usage: exec_bench.py KUBECONFIG NAMESPACE POD N THREADS
prints one JSON object: {"sequential_s": .., "pool_s": .., "threads": ..}
"""
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from kubernetes import client, config
from kubernetes.stream import stream


def main():
    kubeconfig, namespace, pod, n, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    config.load_kube_config(config_file=kubeconfig)
    api = client.CoreV1Api()

    def one(i):
        out = stream(api.connect_get_namespaced_pod_exec, pod, namespace,
                     command=["echo", f"job {i}"], stderr=True, stdin=False, stdout=True, tty=False)
        if out.strip() != f"job {i}":
            raise SystemExit(f"unexpected output {out!r}")

    one(-1)  # connection set-up, imports
    t = time.perf_counter()
    for i in range(n):
        one(i)
    seq = time.perf_counter() - t
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(n)))
    par = time.perf_counter() - t
    print(json.dumps({"sequential_s": seq, "pool_s": par, "threads": threads}))


if __name__ == "__main__":
    main()
