#!/usr/bin/env python3
"""What schema validation cannot see in deploy/: run by `cargo xtask deploy-check`
(and so by `cargo xtask test`) after kubernetes-validate, hadolint and
systemd-analyze.

    check.py SLUICE_BIN

1. The manifests agree with themselves and with the systemd unit: one metrics
   port (container port, scrape annotation, probes, ConfigMap), the mounts the
   ConfigMap points at, one capability set in the DaemonSet and the unit.
2. The ConfigMap's sluice.toml passes the real `sluice config check`.
3. The pod, emulated: sluice runs in a cgroup namespace of its own with the
   host's cgroup hierarchy bind-mounted where the DaemonSet mounts it, as uid 0
   holding exactly the DaemonSet's capabilities, with the DaemonSet's args and
   the ConfigMap's config; the kubelet's probe path answers 200 and /metrics
   names the backend; SIGTERM stops it cleanly. Without `kernel.cgroup_root`
   the same start fails with an error that says what to mount.

Needs root (it loads the real eBPF programs). Every wait is bounded.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(ROOT, "deploy/kubernetes/sluice.yaml")
UNIT = os.path.join(ROOT, "deploy/systemd/sluice.service")


def fail(msg):
    print(f"deploy/check.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def docs():
    with open(MANIFEST) as f:
        return {d["kind"]: d for d in yaml.safe_load_all(f) if d}


def consistency(k):
    ds, cm = k["DaemonSet"], k["ConfigMap"]
    pod = ds["spec"]["template"]["spec"]
    c = pod["containers"][0]
    sc = c["securityContext"]
    config = tomllib.loads(cm["data"]["sluice.toml"])

    expect(pod.get("hostPID") is True, "hostPID must be true (attribution by host pid)")
    expect(not sc.get("privileged"), "the DaemonSet must not be privileged")
    expect(sc["capabilities"]["drop"] == ["ALL"], "capabilities: drop ALL first")
    caps = sorted(sc["capabilities"]["add"])
    expect(any(t.get("operator") == "Exists" and "key" not in t for t in pod["tolerations"]),
           "a toleration for every taint (operator: Exists, no key)")
    expect(pod.get("automountServiceAccountToken") is False, "no API token: sluice never calls the API")

    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    expect(annotations["prometheus.io/scrape"] == "true", "scrape annotation")
    expect(int(annotations["prometheus.io/port"]) == port, "scrape port == container port")
    expect(config["metrics"]["addr"].rsplit(":", 1)[1] == str(port), "ConfigMap metrics.addr port == container port")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        g = c[probe]["httpGet"]
        expect(g["path"] == "/healthz" and g["port"] in ("metrics", port), f"{probe} -> /healthz on the metrics port")

    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    cfg_arg = next(a.split("=", 1)[1] for a in c["args"] if a.startswith("--config="))
    expect(os.path.dirname(cfg_arg) in mounts, f"--config {cfg_arg} is on a mounted volume")
    expect(os.path.dirname(config["state"]["path"]) in mounts, "state.path is on the hostPath state volume")
    # agent.control_socket's default, /run/sluice/control.sock, on a writable volume (the root is read-only).
    socket_dir = os.path.dirname(config.get("agent", {}).get("control_socket", "/run/sluice/control.sock"))
    expect(socket_dir in mounts and not mounts[socket_dir].get("readOnly") and sc.get("readOnlyRootFilesystem"),
           f"{socket_dir} (the control socket's directory) is a writable volume")
    expect(config["kernel"]["cgroup_root"] in mounts, "kernel.cgroup_root is where the host's cgroup fs is mounted")
    for p in ("/sys/kernel/btf", "/sys/kernel/tracing", config["containers"]["pod_logs"], config["containers"]["container_logs"]):
        expect(p in mounts and mounts[p].get("readOnly"), f"{p} is mounted read-only")
    # The runtimes' files: the exact directories sluice reads, read-only.
    runtime_dirs = {"containerd_state": "io.containerd.runtime.v2.task", "crio_state": "overlay-containers"}
    for key, sub in runtime_dirs.items():
        if config["containers"].get(key):
            p = os.path.join(config["containers"][key], sub)
            expect(p in mounts and mounts[p].get("readOnly"), f"containers.{key}: {p} is mounted read-only")

    with open(UNIT) as f:
        unit_caps = next(l.split("=", 1)[1].split() for l in f if l.startswith("CapabilityBoundingSet="))
    expect(sorted(x.removeprefix("CAP_") for x in unit_caps) == caps,
           f"the systemd unit grants {unit_caps}, the DaemonSet {caps}")
    return caps, c["args"], config, cm["data"]["sluice.toml"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return None, ""


def pod_command(sluice, caps, args, config_path, host_cgroup, mount_cgroup):
    """sluice as the kubelet would start it, in a new mount and cgroup namespace."""
    bounding = "-all," + ",".join("+" + c.lower() for c in caps)
    argv = [a.replace("$(NODE_NAME)", "node-1") for a in args]
    argv = [f"--config={config_path}" if a.startswith("--config=") else a for a in argv]
    inner = " ".join([
        "exec setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", sluice, *argv,
    ])
    if mount_cgroup:
        inner = f"mount --rbind /sys/fs/cgroup {host_cgroup} && {inner}"
    return ["unshare", "--mount", "--cgroup", "--propagation", "private", "sh", "-c", inner]


def emulate_pod(sluice, caps, args, config_text):
    tmp = tempfile.mkdtemp(prefix="sluice-pod-")
    try:
        host_cgroup = os.path.join(tmp, "host/sys/fs/cgroup")
        os.makedirs(host_cgroup)
        port = free_port()
        text = re.sub(r'(?m)^cgroup_root = .*$', f'cgroup_root = "{host_cgroup}"', config_text)
        text = re.sub(r'(?m)^addr = .*$', f'addr = "127.0.0.1:{port}"', text)
        text = re.sub(r'(?m)^path = .*$', f'path = "{tmp}/state.json"', text)
        config_path = os.path.join(tmp, "sluice.toml")
        with open(config_path, "w") as f:
            f.write(text)

        # Without the host's hierarchy named: refused, saying what to mount.
        bare = re.sub(r'(?m)^cgroup_root = .*$', 'cgroup_root = ""', text)
        bare_path = os.path.join(tmp, "bare.toml")
        with open(bare_path, "w") as f:
            f.write(bare)
        r = subprocess.run(pod_command(sluice, caps, args, bare_path, host_cgroup, False),
                           capture_output=True, text=True, timeout=120)
        expect(r.returncode != 0 and "cgroup namespace" in r.stderr and "kernel.cgroup_root" in r.stderr,
               f"in a cgroup namespace without kernel.cgroup_root sluice must refuse and say why; got {r.returncode}: {r.stderr}")

        # O_APPEND: the child shares this file's offset, and the seeks below
        # (reading while it runs) must not make it write over its own lines.
        log = open(os.path.join(tmp, "stderr"), "a+")
        p = subprocess.Popen(pod_command(sluice, caps, args, config_path, host_cgroup, True),
                             stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            deadline = time.time() + 90
            status = None
            while time.time() < deadline and p.poll() is None:
                status, _ = get(f"http://127.0.0.1:{port}/healthz")
                if status == 200:
                    break
                time.sleep(0.5)
            log.seek(0)
            err = log.read()
            expect(status == 200, f"/healthz never answered 200 (last {status}); stderr:\n{err}")
            status, metrics = get(f"http://127.0.0.1:{port}/metrics")
            expect(status == 200 and 'sluice_backend_info{backend="cgroup"} 1' in metrics, f"/metrics:\n{metrics[:2000]}")
            p.send_signal(signal.SIGTERM)
            code = p.wait(timeout=30)
            log.seek(0)
            expect(code == 0, f"sluice did not stop cleanly on SIGTERM (exit status {code}); stderr:\n{log.read()[-4000:]}")
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log.seek(0)
        err = log.read()
        expect("backend=cgroup" in err, f"not attached on the cgroup backend:\n{err}")
        print(f"deploy/check.py: the emulated pod (cgroup namespace, capabilities {','.join(caps)}) "
              f"attached, answered /healthz and /metrics, and stopped on SIGTERM")
    finally:
        subprocess.run(["umount", "-R", os.path.join(tmp, "host/sys/fs/cgroup")], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    sluice = os.path.abspath(sys.argv[1])
    caps, args, _, config_text = consistency(docs())
    print(f"deploy/check.py: manifests and unit agree (capabilities {', '.join(caps)})")
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(config_text)
        f.flush()
        r = subprocess.run([sluice, "config", "check", f.name], capture_output=True, text=True, timeout=30)
        expect(r.returncode == 0, f"the ConfigMap's sluice.toml fails `sluice config check`: {r.stderr}")
    print("deploy/check.py: the ConfigMap's sluice.toml passes `sluice config check`")
    emulate_pod(sluice, caps, args, config_text)


if __name__ == "__main__":
    main()
