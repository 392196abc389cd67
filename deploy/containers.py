#!/usr/bin/env python3
"""The DaemonSet's agent run by a real container runtime (podman with runc),
beside real workload containers: run by `cargo xtask deploy-check` (and so by
`cargo xtask test`) after check.py.

    containers.py SLUICE_RELEASE_BIN

1. Images from local bases (no registry is reachable here): a runtime base
   like distroless/cc (glibc, libgcc_s, user 65532) and a workload image
   (busybox, curl), each a root file system this script assembles from the
   host's files and `podman import`s; then deploy/container/Containerfile's
   `prebuilt` target built on that base. Its size is printed.
2. The agent container, with every setting read from deploy/kubernetes/sluice.yaml
   and translated to podman flags (hostPID, drop ALL + the five capabilities,
   uid 0, no privilege escalation, read-only root, seccomp, the hostPath and
   ConfigMap mounts, args and env, limits), in its own cgroup namespace and its
   own network namespace, reached over a veth as the kubelet reaches a pod.
3. Workload containers: one uploading through its own veth to a test host (as a
   CNI-attached pod would), one idle, one with host networking. Their flows and
   alerts must carry podman's container id, runtime, name and image.
4. Rollout: the agent container is stopped and a new one started while an
   upload runs; the new one restores the state from the hostPath, attributes
   the rest of the upload to the container and raises no duplicate alert.
5. Least privilege: the agent refuses to start, naming the capability, when any
   one it needs is dropped; /metrics on the pod's address carries no alert
   counts; the state file is 0600.

Needs root. Every wait is bounded; containers, namespaces and links are removed.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

import check

ROOT = check.ROOT
SINK = os.path.join(ROOT, "tests/fixtures/sink.py")
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
RUNTIME_BASE = "localhost/sluice-base/cc:local"
WORKLOAD = "localhost/sluice-test/workload:1"
AGENT_IMAGE = "localhost/sluice:test"
PREFIX = f"slct{os.getpid() % 10000}"
# The five capabilities' bit numbers (linux/capability.h).
CAP_BITS = {"NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39}
MiB = 1 << 20

fail, expect = check.fail, check.expect


def sh(*argv, check_rc=True, timeout=120, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check_rc and r.returncode != 0:
        fail(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.strip()[-2000:]}")
    return r


def podman(*args, **kw):
    return sh(*PODMAN, *args, **kw)


def ulimits():
    """podman's default ulimits need CAP_SYS_RESOURCE, which this host may not
    grant: ask for limits below the ones this process has (runc refuses to
    set nproc even at its caller's own hard limit without it)."""
    import resource
    out = []
    for name, res, want in (("nofile", resource.RLIMIT_NOFILE, 8192), ("nproc", resource.RLIMIT_NPROC, 1024)):
        soft, _ = resource.getrlimit(res)
        v = want if soft == resource.RLIM_INFINITY else min(soft, want)
        out += ["--ulimit", f"{name}={v}:{v}"]
    return out


# ---------------------------------------------------------------- images

def libraries(binary):
    """The shared objects `binary` loads, as ldd resolves them on this host."""
    r = sh("ldd", binary)
    libs = re.findall(r"(/\S+) \(0x", r.stdout)
    return sorted(set(libs))


def rootfs(files):
    """A root file system holding `files` at their own paths (symlinks
    resolved), /tmp, and the distroless users; returned as a directory."""
    d = tempfile.mkdtemp(prefix="sluice-rootfs-")
    for f in files:
        dst = os.path.join(d, f.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.realpath(f), dst)
    for sub in ("tmp", "etc", "proc", "sys", "dev", "run"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    os.chmod(os.path.join(d, "tmp"), 0o1777)
    with open(os.path.join(d, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    with open(os.path.join(d, "etc/group"), "w") as f:
        f.write("root:x:0:\nnonroot:x:65532:\n")
    return d


def import_image(tag, tree, cmd=None):
    tar = tree + ".tar"
    sh("tar", "-C", tree, "-cf", tar, ".")
    args = ["import"] + (["--change", f"CMD {json.dumps(cmd)}"] if cmd else []) + [tar, tag]
    podman(*args)
    os.unlink(tar)
    shutil.rmtree(tree, ignore_errors=True)


def build_images(sluice):
    # The runtime base: what distroless/cc holds, from this host's glibc.
    import_image(RUNTIME_BASE, rootfs(libraries(sluice)))
    # The workload: busybox for a shell, curl and the libraries it loads.
    busybox = shutil.which("busybox") or fail("busybox is not installed (apt-get install busybox-static)")
    curl = shutil.which("curl") or fail("curl is not installed")
    tree = rootfs(libraries(curl) + [curl])
    os.makedirs(os.path.join(tree, "bin"), exist_ok=True)
    shutil.copy2(busybox, os.path.join(tree, "bin/busybox"))
    for applet in ("sh", "sleep", "head", "cat"):
        os.symlink("busybox", os.path.join(tree, "bin", applet))
    # rclone, as far as a rule can see: the same curl under rclone's name.
    os.makedirs(os.path.join(tree, "usr/local/bin"), exist_ok=True)
    shutil.copy2(curl, os.path.join(tree, "usr/local/bin/rclone"))
    import_image(WORKLOAD, tree, cmd=["/bin/sleep", "600"])
    # The agent: the real Containerfile, with the binary `cargo xtask build` made.
    context = tempfile.mkdtemp(prefix="sluice-image-")
    try:
        shutil.copy2(sluice, os.path.join(context, "sluice"))
        podman("build", "--quiet", "-f", os.path.join(ROOT, "deploy/container/Containerfile"),
               "--build-arg", f"RUNTIME_BASE={RUNTIME_BASE}", "--target", "prebuilt",
               "-t", AGENT_IMAGE, context, timeout=600)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", AGENT_IMAGE).stdout.strip())
    print(f"deploy/containers.py: built {AGENT_IMAGE} from deploy/container/Containerfile: {size / MiB:.1f} MiB")


# ---------------------------------------------------------------- network

class Net:
    """Test hosts and veths, every one removed at the end."""

    def __init__(self):
        self.links, self.netns = [], []

    def add_netns(self, name):
        sh("ip", "netns", "add", name)
        self.netns.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def veth(self, a, b):
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self.links.append(a)

    def place(self, link, where, addr):
        """Move `link` into a named netns (str) or a process's (int pid), address it, up."""
        if where is None:
            ns = []
        elif isinstance(where, int):
            sh("ip", "link", "set", link, "netns", str(where))
            ns = ["nsenter", "-t", str(where), "-n"]
        else:
            sh("ip", "link", "set", link, "netns", where)
            ns = ["ip", "netns", "exec", where]
        sh(*ns, "ip", "addr", "add", addr, "dev", link)
        sh(*ns, "ip", "link", "set", link, "up")
        return ns

    def close(self):
        for l in self.links:
            sh("ip", "link", "del", l, check_rc=False)
        for n in self.netns:
            sh("ip", "netns", "del", n, check_rc=False)


# ---------------------------------------------------------------- the pod

def pod_spec():
    k = check.docs()
    ds, cm = k["DaemonSet"], k["ConfigMap"]
    pod = ds["spec"]["template"]["spec"]
    return pod, pod["containers"][0], cm["data"]["sluice.toml"]


def cpu_count(v):
    v = str(v)
    return str(int(v[:-1]) / 1000) if v.endswith("m") else v


def memory_bytes(v):
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for u, n in units.items():
        if str(v).endswith(u):
            return str(int(str(v)[:-2]) * n)
    return str(v)


def agent_flags(work, name, drop=None):
    """podman flags for the DaemonSet's pod spec. hostPath volumes of type
    DirectoryOrCreate are made under `work` (the kubelet would create them on
    the node; a test does not write /var/lib/sluice), ConfigMaps are files
    under `work`."""
    pod, c, _ = pod_spec()
    sc = c["securityContext"]
    flags = ["--name", name, "--cgroupns", "private", "--network", "none"] + ulimits()
    if pod.get("hostPID"):
        flags += ["--pid", "host"]
    expect(sc["capabilities"]["drop"] == ["ALL"], "the manifest drops ALL capabilities")
    flags += ["--cap-drop", "all"]
    for cap in sc["capabilities"]["add"]:
        if cap != drop:
            flags += ["--cap-add", cap.lower()]
    if sc.get("privileged"):
        fail("the manifest asks for privileged")
    flags += ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        flags += ["--read-only"]
    if sc.get("seccompProfile", {}).get("type") == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    limits = c.get("resources", {}).get("limits", {})
    if "cpu" in limits:
        flags += ["--cpus", cpu_count(limits["cpu"])]
    if "memory" in limits:
        flags += ["--memory", memory_bytes(limits["memory"])]
    for e in c.get("env", []):
        if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            flags += ["--env", f"{e['name']}=node-1"]
        elif "value" in e:
            flags += ["--env", f"{e['name']}={e['value']}"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        if "emptyDir" in v:
            flags += ["--tmpfs", f"{m['mountPath']}:rw,size=1m,mode=0700"]
            continue
        if "configMap" in v:
            source = os.path.join(work, "configmap")
        elif v["hostPath"].get("type") == "DirectoryOrCreate":
            source = os.path.join(work, "hostpath", v["hostPath"]["path"].lstrip("/"))
            os.makedirs(source, exist_ok=True)
        else:
            source = v["hostPath"]["path"]
            expect(os.path.isdir(source), f"hostPath {source} (type Directory) must exist on this node")
        flags += ["-v", f"{source}:{m['mountPath']}" + (":ro" if m.get("readOnly") else "")]
    # Podman keeps what names its containers where CRI-O does (containers/storage);
    # the manifest mounts containerd's and CRI-O's, this is a Podman node's one.
    flags += ["-v", f"{PODMAN_CONTAINERS}:/host{PODMAN_CONTAINERS}:ro"]
    # Args: the kubelet expands $(VAR) from the container's env.
    args = [a.replace("$(NODE_NAME)", "node-1") for a in c["args"]]
    return flags, args


PODMAN_CONTAINERS = "/var/lib/containers/storage/overlay-containers"


def write_configmap(work):
    """The ConfigMap, with three test-only changes: every flow is written (the
    checks read flows, not only alerts), a 2 s tick, and Podman's storage."""
    _, _, text = pod_spec()
    text = re.sub(r'(?m)^emit = .*$', 'emit = "all"', text)
    text = re.sub(r'(?m)^tick = .*$', 'tick = "2s"', text)
    text, n = re.subn(r'(?m)^podman_storage = .*$', 'podman_storage = "/host/var/lib/containers/storage"', text)
    expect(n == 1, "the ConfigMap sets containers.podman_storage once")
    os.makedirs(os.path.join(work, "configmap"), exist_ok=True)
    with open(os.path.join(work, "configmap/sluice.toml"), "w") as f:
        f.write(text)


def container_pid(name):
    return int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip())


def container_id(name):
    return podman("inspect", "--format", "{{.Id}}", name).stdout.strip()


class Agent:
    """The agent container, reached at POD_IP over a veth the way the kubelet reaches a pod."""

    POD_IP, NODE_IP = "10.79.0.2", "10.79.0.1"

    def __init__(self, net, work, name):
        self.name = name
        flags, args = agent_flags(work, name)
        podman("run", "-d", *flags, AGENT_IMAGE, *args)
        host_end, pod_end = f"{PREFIX}a{name[-1]}", f"{PREFIX}p{name[-1]}"
        net.veth(host_end, pod_end)
        net.place(host_end, None, f"{self.NODE_IP}/30")
        net.place(pod_end, container_pid(name), f"{self.POD_IP}/30")
        self.wait_healthy()

    def get(self, path):
        r = sh("curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "5", f"http://{self.POD_IP}:9464{path}", check_rc=False)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), body

    def wait_healthy(self):
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.get("/healthz")[0] == 200:
                return
            state = podman("inspect", "--format", "{{.State.Status}}", self.name).stdout.strip()
            if state != "running":
                fail(f"the agent container {state}: {self.logs()[1][-3000:]}")
            time.sleep(0.5)
        fail(f"the agent's /healthz never answered 200 on the pod address: {self.logs()[1][-3000:]}")

    def logs(self):
        r = podman("logs", self.name)
        return r.stdout, r.stderr

    def records(self):
        out = []
        for line in self.logs()[0].splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                fail(f"a stdout line that is not JSON: {line[:300]!r}")
        return out

    def stop(self):
        podman("stop", "--time", "30", self.name, timeout=60)
        code = int(podman("inspect", "--format", "{{.State.ExitCode}}", self.name).stdout.strip())
        expect(code == 0, f"the agent did not stop cleanly on SIGTERM (exit {code}): {self.logs()[1][-3000:]}")


def of_container(records, cid):
    return [r for r in records if r.get("container", {}).get("id") == cid]


def sent(records, port=None):
    """Bytes of the flow records (to one destination port, if given)."""
    return sum(r.get("source", {}).get("bytes", 0) for r in records
               if r.get("event", {}).get("kind") == "event" and port in (None, r.get("destination", {}).get("port")))


def wait_for(what, cond, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.5)
    fail(f"timed out waiting for {what}")


# ---------------------------------------------------------------- checks

class Sink:
    """sink.py on a test host (http by default): one upload, its byte count at the end."""

    def __init__(self, netns, addr, port=8080, kind="http"):
        self.p = subprocess.Popen(["ip", "netns", "exec", netns, "python3", SINK, kind, addr, str(port)],
                                  stdout=subprocess.PIPE, text=True)
        expect(self.p.stdout.readline().strip() == "ready", "the sink did not start")

    def received(self):
        out, _ = self.p.communicate(timeout=180)
        m = re.search(r"received (\d+)", out)
        return int(m.group(1)) if m else 0


def upload(name, program, url, size, rate=None, detach=False):
    limit = f" --limit-rate {rate}" if rate else ""
    cmd = f"head -c {size} /dev/urandom | {program} -s -S -T - {url}{limit} -o /dev/null"
    return podman("exec", *(["-d"] if detach else []), name, "/bin/sh", "-c", cmd, timeout=300)


def attribution(net, agent):
    sink_ns = f"{PREFIX}sink"
    net.add_netns(sink_ns)
    for n in ("uploader", "idle", "hostnet"):
        podman("run", "-d", "--name", f"{PREFIX}-{n}", *ulimits(),
               "--network", "host" if n == "hostnet" else "none", WORKLOAD)
    ids = {n: container_id(f"{PREFIX}-{n}") for n in ("uploader", "idle", "hostnet")}
    # The uploader's own veth to the test host, as a CNI plugin would give a pod.
    net.veth(f"{PREFIX}u", f"{PREFIX}us")
    net.place(f"{PREFIX}u", container_pid(f"{PREFIX}-uploader"), "10.77.0.2/24")
    net.place(f"{PREFIX}us", sink_ns, "10.77.0.1/24")
    # The host network's way to the test host.
    net.veth(f"{PREFIX}h", f"{PREFIX}hs")
    net.place(f"{PREFIX}h", None, "10.78.0.2/24")
    net.place(f"{PREFIX}hs", sink_ns, "10.78.0.1/24")

    size = 120 * MiB
    s = Sink(sink_ns, "10.77.0.1")
    upload(f"{PREFIX}-uploader", "curl", "http://10.77.0.1:8080/up", size)
    expect(s.received() == size, "the uploader's bytes did not all arrive")
    s = Sink(sink_ns, "10.78.0.1")
    upload(f"{PREFIX}-hostnet", "curl", "http://10.78.0.1:8080/up", 8 * MiB)
    expect(s.received() == 8 * MiB, "the host-network container's bytes did not all arrive")

    def seen():
        r = agent.records()
        return r if sent(of_container(r, ids["uploader"])) >= size and sent(of_container(r, ids["hostnet"])) >= 8 * MiB else None
    records = wait_for("the uploads' flows on the agent's stream", seen)
    for n, cid in ids.items():
        mine = of_container(records, cid)
        if n == "idle":
            expect(not mine, f"records for the idle container: {mine[:2]}")
            continue
        c = mine[0]["container"]
        expect(c.get("runtime") == "podman" and c.get("name") == f"{PREFIX}-{n}" and c.get("image", {}).get("name") == WORKLOAD,
               f"{n}: container fields {c}")
    up = of_container(records, ids["uploader"])
    got = sent(up)
    expect(abs(got - size) <= size // 100, f"uploader: {got} bytes attributed, {size} sent")
    alerts = [r for r in up if r["event"]["kind"] == "alert"]
    expect(any(a["rule"]["id"] == "sluice.bulk_upload" for a in alerts), f"no bulk_upload alert for the uploader: {[a['rule']['id'] for a in alerts]}")
    # `kubectl exec <pod> -- sluice top`: the live view from inside the agent's container.
    r = podman("exec", agent.name, "/usr/local/bin/sluice", "top", "--count", "1")
    expect(any("curl" in l and "10.77.0.1" in l for l in r.stdout.splitlines()), f"sluice top in the agent container:\n{r.stdout}{r.stderr}")
    code, metrics = agent.get("/metrics")
    expect(code == 200 and "sluice_ticks_total" in metrics and "sluice_alerts_total" not in metrics,
           "/metrics on the pod's address must carry no alert counts")
    print(f"deploy/containers.py: {got} bytes of {PREFIX}-uploader's curl (own veth, own netns) and the host-network "
          f"container's upload attributed with podman's id, name and image; the idle container has no records; "
          f"bulk_upload alerted; `sluice top` in the agent container lists the upload; /metrics on the pod address "
          f"has no alert counts")
    return sink_ns, ids


def rollout(net, work, agent, sink_ns, ids):
    """A new agent container while an upload runs (as a DaemonSet rollout does)."""
    name = f"{PREFIX}-uploader"
    size = 60 * MiB
    s = Sink(sink_ns, "10.77.0.1", 8081)
    upload(name, "rclone", "http://10.77.0.1:8081/up", size, rate="3M", detach=True)
    first = wait_for("agent 1's exfil_tool_upload alert", lambda: [
        r for r in of_container(agent.records(), ids["uploader"])
        if r["event"]["kind"] == "alert" and r["rule"]["id"] == "sluice.exfil_tool_upload"])
    stopping = time.time()
    agent.stop()
    # What the old agent saw, its last tick (flushed on SIGTERM) included.
    before = sent(of_container(agent.records(), ids["uploader"]), 8081)
    state = os.path.join(work, "hostpath/var/lib/sluice/state.json")
    expect(os.path.exists(state) and os.stat(state).st_mode & 0o777 == 0o600, f"the state file {state} must exist, mode 0600")
    podman("rm", agent.name)
    agent2 = Agent(net, work, f"{PREFIX}-agent2")
    # Between the old agent's last read and the new one's attach no program
    # is loaded; the old one handed over where the TCP sequence stood, and the
    # new one counts what left in between from it.
    gap = time.time() - stopping
    got = s.received()
    expect(got == size, "the rollout upload did not all arrive")
    # The new agent's flows of this upload: the last tick's may take two ticks.
    time.sleep(4)
    records = agent2.records()
    mine = [r for r in records if r.get("destination", {}).get("port") == 8081 and r["event"]["kind"] == "event"]
    strays = [r for r in mine if r.get("container", {}).get("id") != ids["uploader"]]
    expect(mine and not strays, f"agent 2's records of the older connection must name its container: {strays[:1]}")
    after = sent(mine)
    missed = size - before - after
    # Its process, from the namespace's /proc/<pid>/net listing (the agent may
    # not enter the namespace), once a scan has run.
    named = [r for r in mine if r.get("process", {}).get("name") == "rclone"]
    expect(named, f"agent 2 never named the older connection's process: {[r.get('process') for r in mine][:3]}")
    unnamed = sent([r for r in mine if r.get("process", {}).get("pid", 0) == 0])
    others = sorted({r["rule"]["id"] for r in of_container(records, ids["uploader"]) if r["event"]["kind"] == "alert"})
    expect("restored" in agent2.logs()[1], f"agent 2 did not restore the state: {agent2.logs()[1][-2000:]}")
    dup = [r for r in of_container(records, ids["uploader"]) if r["event"]["kind"] == "alert" and r["rule"]["id"] == "sluice.exfil_tool_upload"]
    expect(not dup, f"agent 2 raised the alert agent 1 raised: {dup}")
    handed = "TCP flows handed over by the previous agent" in agent2.logs()[1]
    # HTTP framing makes the flows slightly more than the body the sink counted.
    expect(handed and abs(missed) <= size // 100,
           f"agent 1 saw {before} bytes, agent 2 {after}, of {size}: {missed} unseen across a {gap:.1f} s gap (handover said: {handed})")
    print(f"deploy/containers.py: rollout during an upload: agent 1 attributed {before} bytes and alerted "
          f"({first[0]['rule']['id']}); agent 2 restored the state from the hostPath, attributed {after} bytes of the "
          f"connection older than itself to the container ({unnamed} of them before its scan named rclone in that "
          f"network namespace) and raised no duplicate (its alerts: {others or 'none'}); the {gap:.1f} s with no agent loaded "
          f"were counted from the handed-over TCP position ({-missed} bytes more than the body, its HTTP framing); the state file is 0600")
    return agent2


def refusals(work):
    """Each needed capability dropped alone: the agent refuses and names it."""
    _, c, _ = pod_spec()
    bounding = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("CapBnd:")), 16)
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    for cap in c["securityContext"]["capabilities"]["add"]:
        if not bounding & (1 << CAP_BITS[cap]):
            print(f"deploy/containers.py: this host's bounding set has no CAP_{cap}, so the agent ran without it "
                  f"(kernel {release[0]}.{release[1]} does not need it); its refusal is not tested here")
            continue
        if cap == "SYS_RESOURCE" and release >= (5, 11):
            continue
        flags, args = agent_flags(work, f"{PREFIX}-no-{cap.lower()}", drop=cap)
        r = podman("run", "--rm", *flags, AGENT_IMAGE, *args, check_rc=False, timeout=120)
        expect(r.returncode != 0 and f"CAP_{cap}" in r.stderr, f"without CAP_{cap} the agent must refuse and name it: {r.returncode} {r.stderr[-1000:]}")
    print("deploy/containers.py: with any one of BPF, PERFMON, NET_ADMIN, SYS_PTRACE dropped the agent refuses, naming it")


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    sluice = os.path.abspath(sys.argv[1])
    build_images(sluice)
    work = tempfile.mkdtemp(prefix="sluice-pods-")
    net = Net()
    agents = []
    try:
        write_configmap(work)
        agents.append(Agent(net, work, f"{PREFIX}-agent1"))
        sink_ns, ids = attribution(net, agents[0])
        agents.append(rollout(net, work, agents[0], sink_ns, ids))
        agents[-1].stop()
        refusals(work)
    finally:
        for n in ("agent1", "agent2", "uploader", "idle", "hostnet"):
            podman("rm", "-f", "-t", "0", f"{PREFIX}-{n}", check_rc=False)
        net.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
