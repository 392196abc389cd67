#!/usr/bin/env python3
"""The systemd unit run by systemd: run by `cargo xtask deploy-check` (and so
by `cargo xtask test`) after containers.py.

    unit.py SLUICE_RELEASE_BIN

A Debian bookworm root file system (debootstrap, minbase plus systemd, cached
under target/) with the release binary and deploy/systemd/sluice.service
installed and enabled as its header says, booted by podman with
`--systemd=always`. systemd starts the unit with every hardening setting it
has (ProtectSystem=strict, PrivateTmp, PrivateDevices, the capability bounding
set, NoNewPrivileges, MemoryDenyWriteExecute, RestrictAddressFamilies, ...);
then a copy of bash renamed `mega-put`, outside the service, uploads through a
veth to a test host, and the journal must hold the alert naming it. `systemctl
stop` must end the service cleanly, leaving the state file 0600 in the
StateDirectory (0700).

The container is `--privileged`: it stands for a host, and systemd's sandboxing
(mount namespaces for ProtectSystem and PrivateTmp) needs what a host's PID 1
has. Needs root; every wait is bounded; the container and links are removed.
"""
import json
import os
import shutil
import sys
import time

import containers as c

ROOT = c.ROOT
IMAGE = "localhost/sluice-test/systemd:1"
NAME = f"{c.PREFIX}-systemd"
CACHE = os.path.join(ROOT, "target/deploy-systemd")
MiB = c.MiB


def debian_root():
    """minbase + systemd, made once (about two minutes from Debian's mirror)."""
    tree = os.path.join(CACHE, "rootfs")
    done = os.path.join(CACHE, "rootfs.done")
    if not os.path.exists(done):
        shutil.rmtree(tree, ignore_errors=True)
        os.makedirs(CACHE, exist_ok=True)
        c.sh("debootstrap", "--variant=minbase", "--include=systemd,systemd-sysv", "bookworm", tree,
             "http://deb.debian.org/debian", timeout=900)
        open(done, "w").close()
    return tree


def build_image(sluice):
    tree = debian_root()
    # As the unit file's header says to install it.
    c.sh("install", "-m", "0755", sluice, os.path.join(tree, "usr/local/bin/sluice"))
    unit = os.path.join(ROOT, "deploy/systemd/sluice.service")
    c.sh("install", "-m", "0644", unit, os.path.join(tree, "etc/systemd/system/sluice.service"))
    wants = os.path.join(tree, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    link = os.path.join(wants, "sluice.service")
    if not os.path.lexists(link):
        os.symlink("/etc/systemd/system/sluice.service", link)
    with open(os.path.join(tree, "etc/default/sluice"), "w") as f:
        f.write('SLUICE_ARGS="--tick 2s"\n')
    # The uploader: a program sluice has never heard of, under a Mega client's name.
    shutil.copy2(os.path.join(tree, "usr/bin/bash"), os.path.join(tree, "usr/local/bin/mega-put"))
    tar = os.path.join(CACHE, "image.tar")
    c.sh("tar", "-C", tree, "-cf", tar, ".", timeout=300)
    c.podman("import", "--change", 'CMD ["/sbin/init"]', tar, IMAGE, timeout=300)
    os.unlink(tar)


def in_box(*argv, **kw):
    return c.podman("exec", NAME, *argv, **kw)


def journal():
    return in_box("journalctl", "-u", "sluice", "-o", "cat", "--no-pager").stdout


def alerts():
    out = []
    for line in journal().splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("event", {}).get("kind") == "alert":
                out.append(r)
    return out


def main():
    if len(sys.argv) != 2:
        c.fail(__doc__)
    sluice = os.path.abspath(sys.argv[1])
    build_image(sluice)
    net = c.Net()
    try:
        c.podman("run", "-d", "--name", NAME, "--systemd=always", "--privileged", "--network", "none", *c.ulimits(), IMAGE)
        state = c.wait_for("systemd to start the unit", lambda: (lambda s: s if s in ("active", "failed") else None)(
            in_box("systemctl", "is-active", "sluice", check_rc=False).stdout.strip()), timeout=90)
        c.expect(state == "active", f"sluice.service is {state}:\n{journal()[-3000:]}")
        c.wait_for("the agent's ready line", lambda: "sluice: ready:" in journal(), timeout=90)
        sink_ns = f"{c.PREFIX}usink"
        net.add_netns(sink_ns)
        net.veth(f"{c.PREFIX}s", f"{c.PREFIX}ss")
        net.place(f"{c.PREFIX}s", c.container_pid(NAME), "10.76.0.2/24")
        net.place(f"{c.PREFIX}ss", sink_ns, "10.76.0.1/24")
        size = 8 * MiB
        s = c.Sink(sink_ns, "10.76.0.1", 9000, kind="tcp")
        # bash builtins only, so mega-put itself sends (64 KiB per printf).
        in_box("/usr/local/bin/mega-put", "-c", f"exec 3>/dev/tcp/10.76.0.1/9000; for i in {{1..{size >> 16}}}; do printf '%65536s' '' >&3; done")
        c.expect(s.received() == size, "the upload did not all arrive")
        found = c.wait_for("the exfil_tool_upload alert in the journal", lambda: [
            a for a in alerts() if a["rule"]["id"] == "sluice.exfil_tool_upload" and a.get("process", {}).get("name") == "mega-put"])
        view = in_box("/usr/local/bin/sluice", "top", "--count", "1").stdout
        c.expect(any("mega-put" in l and "exfil_tool" in l for l in view.splitlines()), f"sluice top beside the unit:\n{view}")
        in_box("systemctl", "stop", "sluice", timeout=60)
        result = in_box("systemctl", "show", "sluice", "-p", "Result", "-p", "ExecMainStatus").stdout.split()
        c.expect(result == ["Result=success", "ExecMainStatus=0"], f"sluice did not stop cleanly: {result}\n{journal()[-2000:]}")
        modes = in_box("stat", "-c", "%a", "/var/lib/sluice", "/var/lib/sluice/state.json").stdout.split()
        c.expect(modes == ["700", "600"], f"StateDirectory and state file modes: {modes}")
        print(f"deploy/unit.py: systemd started deploy/systemd/sluice.service with all its hardening; it alerted on "
              f"mega-put's {size} bytes ({found[0]['rule']['id']}), `sluice top` read it through the RuntimeDirectory's "
              f"socket, it stopped cleanly, and left its state 0600 in a 0700 StateDirectory")
    finally:
        c.podman("rm", "-f", "-t", "0", NAME, check_rc=False)
        net.close()


if __name__ == "__main__":
    main()
