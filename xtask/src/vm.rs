//! `cargo xtask vm-test`: the send-path backends on a real kernel that allows
//! them. This host's kernel forbids kprobes and BPF trampolines, so Debian's
//! cloud kernel (6.1: BTF, kprobes, fentry) boots under qemu (TCG: KVM does not
//! work here) with an initramfs holding busybox, sluice and the workloads. The
//! guest runs every scenario under `--probe fentry`, then `--probe kprobe`, and
//! prints the records on the serial console; `tests/tests/vm.rs` asserts on them.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{root, run, setup};

/// Longest the guest may run (boot, both backends, all scenarios: ~1 min).
const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// What every guest init does first: mounts, loopback, and `sluice check`.
pub const PROLOGUE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /tmp /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing
mkdir -p /sys/fs/bpf /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 none /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
# Where the kernel lists its active LSMs (containment asks whether BPF's is one).
mount -t securityfs securityfs /sys/kernel/security
ip link set lo up
# sock_diag's TCP part is a module in Debian's kernel (loaded on first use on a
# real system; this initramfs has no modprobe).
for m in inet_diag tcp_diag; do insmod /modules/$m.ko || echo "SCENARIO-ERROR insmod $m"; done
# Kernel TLS and the AEAD it needs are modules too, in dependency order.
load_ktls() {
  for m in gf128mul ghash-generic ctr gcm tls; do insmod /modules/$m.ko || echo "SCENARIO-ERROR insmod $m"; done
}
echo "=====KERNEL $(uname -r)====="
echo "=====CHECK====="
/sluice check
echo "=====END CHECK====="
"#;

/// `wait_for FILE PATTERN TRIES`: until PATTERN is in FILE, 0.1 s a try (POSIX
/// sh and busybox sh; the test and bench scenario scripts both use it).
pub const WAIT_FOR: &str = r#"
wait_for() {
  i=0
  while ! grep -q "$2" "$1" 2>/dev/null; do
    sleep 0.1; i=$((i+1))
    if [ $i -gt $3 ]; then echo "SCENARIO-ERROR timeout waiting for $2 in $1"; return 1; fi
  done
}
"#;

/// The test scenarios, run after the prologue as the guest's init (busybox sh).
const SCENARIOS: &str = r#"
dd if=/dev/zero of=/tmp/sendfile.bin bs=1000000 count=20 2>/dev/null


# scenario NAME PORT SINKKIND SINKADDR -- sender command...
scenario() {
  name=$1; port=$2; kind=$3; addr=$4; shift 4
  # Per-backend files: the first run's "ready" must not satisfy the second's wait.
  /netload sink $kind $addr $port > /tmp/sink-$B-$name 2>&1 &
  SK=$!
  wait_for /tmp/sink-$B-$name ready 200
  sh -c 'echo "SCENARIO '"$B"' '"$name"' pid=$$"; exec "$@"' sh "$@" > /tmp/send-$B-$name 2>&1
  cat /tmp/send-$B-$name
  # A sender that forks reports its child, which is the one that sends.
  sed -n "s/^child pid=/CHILD $B $name pid=/p" /tmp/send-$B-$name
  wait_for /tmp/sink-$B-$name received 1200
  # A sink whose sender failed would wait in accept() forever: end it. Then
  # wait for it alone (a bare `wait` would wait for the sensor too).
  kill $SK 2>/dev/null
  wait $SK 2>/dev/null
}

# sensor_run SCENARIOS: sluice --probe $B around the function SCENARIOS,
# then its records and stderr between markers.
sensor_run() {
  /sluice run --probe $B --emit all --tick 1s --state "" > /tmp/out-$B.jsonl 2> /tmp/err-$B.log &
  SP=$!
  if wait_for /tmp/err-$B.log "sluice: ready" 1200; then
    $1
    sleep 2
  fi
  kill -TERM $SP
  wait $SP
  echo "=====BEGIN $B====="
  cat /tmp/out-$B.jsonl
  echo "=====END $B====="
  echo "=====STDERR $B====="
  cat /tmp/err-$B.log
  echo "=====END STDERR $B====="
}

every_scenario() {
    scenario tcp4 9001 tcp 127.0.0.1 /netload send 127.0.0.1 9001 50000000
    scenario tcp6 9002 tcp ::1 /netload send ::1 9002 20000000
    scenario udp 9003 udp 127.0.0.1 /netload udp 127.0.0.1 9003 5000 1200
    scenario sendfile 9004 tcp 127.0.0.1 /netload sendfile 127.0.0.1 9004 /tmp/sendfile.bin
    scenario burst 9005 tcp 127.0.0.1 /burst 127.0.0.1 9005 1000000
    scenario sendmsg 9011 tcp 127.0.0.1 /netload sendmsg 127.0.0.1 9011 10000000
    scenario sendmmsg 9012 udp 127.0.0.1 /netload sendmmsg 127.0.0.1 9012 4000 1200
    scenario splice 9013 tcp 127.0.0.1 /netload splice 127.0.0.1 9013 /tmp/sendfile.bin
    scenario uring 9014 tcp 127.0.0.1 /netload uring 127.0.0.1 9014 10000000
    scenario inherit 9015 tcp 127.0.0.1 /netload inherit 127.0.0.1 9015 10000000
    scenario udp-mapped 9022 udp 127.0.0.1 /netload udp ::ffff:127.0.0.1 9022 5000 1200
    scenario mptcp 9023 mptcp 127.0.0.1 /netload mptcp 127.0.0.1 9023 20000000
    scenario thread-exit 9021 tcp 127.0.0.1 /netload thread-exit 127.0.0.1 9021 500000 20
    scenario blocked 9024 slow 127.0.0.1 /netload blocked 32 127.0.0.1 9024 1000000
    scenario recv-waitall 9025 waitall 127.0.0.1 /netload send 127.0.0.1 9025 20000000
    scenario sockmap 9027 tcp 127.0.0.1 /netload sockmap 127.0.0.1 9027 10000000
    # kTLS: the module loads while the first sensor runs (as on a host, on
    # first use), so the hook cannot depend on it being there at start.
    [ $B = fentry ] && load_ktls
    scenario ktls 9028 tcp 127.0.0.1 /netload ktls 127.0.0.1 9028 ktls.example.org 20000000
    scenario ktls6 9029 tcp ::1 /netload ktls ::1 9029 ktls6.example.org 10000000
    scenario ktls-sendfile 9030 tcp 127.0.0.1 /netload ktls 127.0.0.1 9030 ktls-file.example.org 0 /tmp/sendfile.bin
    scenario ktls-rx 9031 tcp 127.0.0.1 /netload ktls-rx 127.0.0.1 9031 ktls-rx.example.org 10000000
    # exec by a relative name from a directory on its own mount, then chdir /.
    mkdir -p /mnt/rel && mount -t tmpfs none /mnt/rel && cp /netload /mnt/rel/relx
    scenario relexec 9026 tcp 127.0.0.1 sh -c 'cd /mnt/rel && exec ./relx chdir-send / 127.0.0.1 9026 1000000'
    # busybox's sh runs applets in-process: exec a real second program instead.
    cp /netload /tmp/fdsend
    scenario exec-send 9016 tcp 127.0.0.1 /netload exec-send 127.0.0.1 9016 /tmp/fdsend fdsend 3 10000000
    scenario tls 9006 tcp 127.0.0.1 /netload tls 127.0.0.1 9006 gfs208n140.userstorage.mega.co.nz 3000000
    scenario quic 9007 udp 127.0.0.1 /netload quic 127.0.0.1 9007 200
    scenario dns 9008 tcp 127.0.0.2 /netload dns-send 127.0.0.2 9008 upload.box.com 1000000
    scenario dns-forged 9018 tcp 127.0.0.3 /netload dns-unsolicited 127.0.0.3 9018 content.dropboxapi.com 1000000
    scenario tls-split 9017 tcp 127.0.0.1 /netload tls-split 127.0.0.1 9017 split.example.org 2000000
    scenario socks5 9019 tcp 127.0.0.1 /netload socks5 127.0.0.1 9019 socks.example.net 2000000
    # Queries only (copied by dns_egress): no sink, so not a `scenario`.
    sh -c 'echo "SCENARIO '"$B"' dns-tunnel pid=$$"; exec /netload dns-tunnel t.exfil-test.net 400'
}

# The cgroup backend counts kTLS records on the wire; this host's own kernel
# has no kTLS, so that is checked here.
ktls_scenario() {
    scenario ktls 9028 tcp 127.0.0.1 /netload ktls 127.0.0.1 9028 ktls.example.org 20000000
}

# Containment: a Mega-named uploader at 5 MB/s cut off by an enforcing rule,
# in a sensor run of its own (a config that enforces and judges loopback).
# fentry's run refuses sends with the BPF LSM too; kprobe's has it off, so
# only the packet drop and the abort stop the upload there.
cat > /tmp/respond-fentry.toml <<EOF
[detect]
include_loopback = true
[respond]
rules = { "sluice.exfil_tool_upload" = "enforce" }
ttl = "4s"
EOF
{ cat /tmp/respond-fentry.toml; echo "lsm = false"; } > /tmp/respond-kprobe.toml
respond_run() {
  /sluice run --probe $B --config /tmp/respond-$B.toml --emit alerts --tick 1s --state "" > /tmp/rout-$B.jsonl 2> /tmp/rerr-$B.log &
  SP=$!
  if wait_for /tmp/rerr-$B.log "sluice: ready" 1200; then
    cp /netload /tmp/mega-put
    /netload sink idle 127.0.0.1 9041 3 > /tmp/rsink1-$B 2>&1 &
    /netload sink idle 127.0.0.1 9042 10 > /tmp/rsink2-$B 2>&1 &
    wait_for /tmp/rsink1-$B ready 200
    wait_for /tmp/rsink2-$B ready 200
    sh -c 'echo "SCENARIO '"$B"' contained pid=$$"; exec /tmp/mega-put contained 127.0.0.1 9041 400000000 5000000 9042' > /tmp/rsend-$B 2>&1
    wait_for /tmp/rsink1-$B received 200
    wait_for /tmp/rsink2-$B received 200
    sleep 2
  fi
  kill -TERM $SP
  wait $SP
  echo "=====BEGIN respond-$B====="
  cat /tmp/rout-$B.jsonl
  echo "=====END respond-$B====="
  echo "=====RESPOND $B====="
  cat /tmp/rsend-$B
  sed 's/^/sink1 /' /tmp/rsink1-$B
  sed 's/^/sink2 /' /tmp/rsink2-$B
  cat /tmp/rerr-$B.log
  echo "=====END RESPOND $B====="
}

for B in fentry kprobe; do
  sensor_run every_scenario
  respond_run
done
B=cgroup
sensor_run ktls_scenario
echo "=====DONE====="
poweroff -f
"#;

/// Newest Debian cloud kernel in /boot.
fn kernel() -> Result<PathBuf> {
    let mut k: Vec<PathBuf> = fs::read_dir("/boot")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-") && n.to_string_lossy().ends_with("-cloud-amd64")))
        .collect();
    k.sort();
    k.pop().context("no /boot/vmlinuz-*-cloud-amd64 (linux-image-cloud-amd64 should have installed one)")
}

/// Shared libraries `bin` needs, with the dynamic loader, from ldd.
fn libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

fn copy_into(rootfs: &Path, src: &Path, dst_rel: &Path) -> Result<()> {
    let dst = rootfs.join(dst_rel.strip_prefix("/").unwrap_or(dst_rel));
    if let Some(p) = dst.parent() {
        fs::create_dir_all(p)?;
    }
    fs::copy(src, &dst).with_context(|| format!("copying {} into the initramfs", src.display()))?;
    Ok(())
}

/// The guest kernel's modules for kTLS (see `load_ktls` in the prologue) and
/// sock_diag, from the modules directory its package installed beside it.
const GUEST_MODULES: [&str; 7] = [
    "crypto/gf128mul.ko",
    "crypto/ghash-generic.ko",
    "crypto/ctr.ko",
    "crypto/gcm.ko",
    "net/tls/tls.ko",
    // sock_diag for TCP (containment's SOCK_DESTROY), loaded at boot.
    "net/ipv4/inet_diag.ko",
    "net/ipv4/tcp_diag.ko",
];

fn copy_modules(rootfs: &Path) -> Result<()> {
    let kernel = kernel()?;
    let version = kernel.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("vmlinuz-")).context("kernel file name")?;
    for m in GUEST_MODULES {
        let src = Path::new("/lib/modules").join(version).join("kernel").join(m);
        let name = Path::new(m).file_name().context("module name")?;
        copy_into(rootfs, &src, &Path::new("/modules").join(name))?;
    }
    Ok(())
}

/// An initramfs with busybox, `bins` (and their libraries), the modules
/// and `init` as /init.
pub fn build_initramfs(init: &str, bins: &[(PathBuf, &str)]) -> Result<PathBuf> {
    let vm = root().join("target/vm");
    let rootfs = vm.join("root");
    let _ = fs::remove_dir_all(&rootfs);
    fs::create_dir_all(rootfs.join("bin"))?;
    copy_into(&rootfs, Path::new("/bin/busybox"), Path::new("/bin/busybox"))?;
    for (src, name) in bins {
        // Stripped: the initramfs lives in guest memory.
        let dst = rootfs.join(name);
        run(Command::new("strip").arg("-o").arg(&dst).arg(src))?;
        for lib in libs(src)? {
            copy_into(&rootfs, &lib, &lib)?;
        }
    }
    copy_modules(&rootfs)?;
    let init_path = rootfs.join("init");
    fs::write(&init_path, init)?;
    run(Command::new("chmod").arg("755").arg(&init_path))?;
    let initrd = vm.join("initrd.cpio.gz");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'", rootfs.display(), initrd.display()))
        .status()?;
    if !status.success() {
        bail!("building the initramfs failed");
    }
    Ok(initrd)
}

/// Boot the guest, return the serial log's path (`target/vm/<log>`). The
/// guest is killed after `timeout`.
pub fn boot(initrd: &Path, log: &str, timeout: Duration) -> Result<PathBuf> {
    let kernel = kernel()?;
    let log = root().join("target/vm").join(log);
    println!("xtask: booting {} under qemu (TCG)", kernel.display());
    let mut child = Command::new("qemu-system-x86_64")
        // One vCPU: arming kprobes patches kernel text with cross-CPU
        // synchronization, and with two vCPUs under multi-threaded TCG the
        // guest once soft-locked both CPUs doing it (intermittently).
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "1", "-nographic", "-no-reboot", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(initrd)
        // A lockup panics, and with -no-reboot qemu exits: fail fast, never hang.
        .args(["-append", "console=ttyS0 quiet panic=-1 softlockup_panic=1 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let mut out = child.stdout.take().context("qemu stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let buf = reader.join().unwrap_or_default();
            fs::write(&log, &buf)?;
            bail!("the guest did not finish within {timeout:?}; its log is {}:\n{}", log.display(), tail(&buf));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let buf = reader.join().unwrap_or_default();
    fs::write(&log, &buf)?;
    println!("xtask: guest finished ({status}) in {:.0?}; serial log {}", started.elapsed(), log.display());
    if !String::from_utf8_lossy(&buf).contains("=====DONE=====") {
        bail!("the guest stopped before finishing its scenarios; log:\n{}", tail(&buf));
    }
    Ok(log)
}

fn tail(buf: &[u8]) -> String {
    let text = String::from_utf8_lossy(buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

pub fn vm_test(cargo: impl Fn() -> Command) -> Result<()> {
    setup::ensure_vm_tools()?;
    run(cargo().args(["build", "-p", "sensor-user", "-p", "sluice-tests", "--bins"]))?;
    let bin = root().join("target/debug");
    let initrd = build_initramfs(&format!("{PROLOGUE}{WAIT_FOR}{SCENARIOS}"), &[
        (bin.join("sluice"), "sluice"),
        (bin.join("netload"), "netload"),
        (bin.join("burst"), "burst"),
    ])?;
    let log = boot(&initrd, "serial.log", GUEST_TIMEOUT)?;
    run(cargo().args(["test", "-p", "sluice-tests", "--test", "vm", "--", "--test-threads=1"]).env("SLUICE_VM_LOG", &log))
}
