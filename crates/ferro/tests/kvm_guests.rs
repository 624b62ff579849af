//! `ferro run --arch x86_64 --accel kvm` end to end, with small guests the
//! test builds with gcc (tests/kvm_guest): serial output, the command line
//! and initrd where each boot protocol (bzImage, ELF 64-bit entry, PVH) puts
//! them, virtio-blk on a qcow2 image, N vCPUs reporting in, a triple fault,
//! memory across the MMIO hole, and bad kernels refused before any vCPU
//! runs. Needs /dev/kvm (a missing one fails, it is not skipped).

mod kvm_guest;

use std::path::Path;
use std::process::{Command, Output};

use kvm_guest::{bzimage, fnv, guests};

fn ferro() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferro"))
}

/// Runs ferro (stdin closed) with a generous bound; the guests here finish
/// in well under a second on emulated KVM.
fn run(kernel: &Path, extra: &[&str]) -> Output {
    let mut c = ferro();
    c.args([
        "run", "--arch", "x86_64", "--accel", "kvm", "--memory", "128M", "--kernel",
    ])
    .arg(kernel)
    .args(extra)
    .stdin(std::process::Stdio::null());
    let child = c
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(120)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // Kill the child we started (by its pid).
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("ferro did not finish within 120 s");
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn line<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in guest output:\n{out}"))
}

fn assert_ok(o: &Output) -> String {
    let out = stdout(o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "ferro failed\nstdout:\n{out}\nstderr:\n{}",
        stderr(o)
    );
    assert!(out.contains("DONE"), "{out}");
    out
}

#[test]
fn serial_output_arrives_and_poweroff_exits_zero() {
    let g = guests();
    let o = run(&g.bzimage, &["--append", "console=ttyS0"]);
    let out = assert_ok(&o);
    assert_eq!(line(&out, "ENTRY="), "linux64");
    // Reserved EBDA, low RAM, and the first 640K.
    assert_eq!(line(&out, "E820="), "3");
}

fn check_cmdline_and_initrd(kernel: &Path, entry: &str) {
    let g = guests();
    let initrd: Vec<u8> = (0..300_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let rd = g.dir.join(format!("initrd-{entry}.bin"));
    std::fs::write(&rd, &initrd).unwrap();
    let cmdline = "console=ttyS0 root=/dev/vda ferro.test=\"a b\" quiet";
    let o = run(
        kernel,
        &["--append", cmdline, "--initrd", rd.to_str().unwrap()],
    );
    let out = assert_ok(&o);
    assert_eq!(line(&out, "ENTRY="), entry);
    // No virtio devices: the command line is passed exactly.
    assert_eq!(line(&out, "CMDLINE="), cmdline);
    let f: Vec<&str> = line(&out, "INITRD=").split(',').collect();
    let addr = u64::from_str_radix(f[0].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(f[1], initrd.len().to_string());
    assert_eq!(
        f[2],
        format!("{:#018x}", fnv(&initrd)),
        "initrd bytes differ"
    );
    // Page aligned, above the kernel, inside the 128 MiB of RAM.
    assert_eq!(addr % 4096, 0);
    assert!(
        addr >= 0x20_0000 && addr + initrd.len() as u64 <= 128 << 20,
        "{addr:#x}"
    );
}

#[test]
fn cmdline_and_initrd_bzimage() {
    check_cmdline_and_initrd(&guests().bzimage, "linux64");
}

#[test]
fn cmdline_and_initrd_elf_64bit_entry() {
    check_cmdline_and_initrd(&guests().elf64, "linux64");
}

#[test]
fn cmdline_and_initrd_pvh() {
    check_cmdline_and_initrd(&guests().pvh, "pvh");
}

#[test]
fn four_vcpus_report_in() {
    // Through both entries: the PVH guest builds its own page tables.
    for k in [&guests().elf64, &guests().pvh] {
        let o = run(k, &["--cpus", "4", "--append", "test=smp"]);
        let out = assert_ok(&o);
        assert_eq!(line(&out, "MPCPUS="), "4");
        for i in 0..4 {
            assert!(out.contains(&format!("CPU {i} reported")), "{out}");
        }
        assert!(out.contains("SMP OK"), "{out}");
    }
}

#[test]
fn triple_fault_is_a_crash() {
    let o = run(&guests().pvh, &["--append", "test=triple"]);
    assert!(stdout(&o).contains("TRIPLE"));
    assert_eq!(o.status.code(), Some(3), "docs/CONTROL.md: a crash exits 3");
    let e = stderr(&o);
    assert!(e.contains("guest crashed: triple fault on vCPU 0"), "{e}");
}

#[test]
fn kvm_internal_error_is_a_crash() {
    let o = run(&guests().elf64, &["--append", "test=internal"]);
    let out = stdout(&o);
    assert!(
        out.contains("INTERNAL") && !out.contains("NOT-REACHED"),
        "{out}"
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("guest crashed: KVM stopped vCPU 0: KVM internal error (suberror 1: instruction emulation failed)"),
        "{e}"
    );
    // Where it happened: the registers.
    assert!(e.contains("rip=0x"), "{e}");
}

/// The guest finds the RSDP, checks every table's checksum, counts the
/// MADT's CPUs and powers off with the sleep type it reads from the DSDT's
/// `\_S5` (the tables themselves are checked with `iasl -d` in arch).
#[test]
fn acpi_tables_and_s5_poweroff() {
    let o = run(&guests().pvh, &["--cpus", "3", "--append", "test=acpi"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert_eq!(line(&out, "ACPI-CPUS="), "3");
    assert_eq!(line(&out, "ACPI-SCI="), "12");
    assert_eq!(line(&out, "ACPI-S5="), "5 PM1A_CNT=0x0000000000000604");
    assert!(
        !out.contains("DONE"),
        "powered off through S5, not the bare port: {out}"
    );
}

/// Per-thread seccomp filters are on by default (vCPU threads one filter,
/// the main and console threads another) and off with `--seccomp off`.
#[test]
fn seccomp_filters_every_thread_unless_off() {
    for (flag, want) in [("on", true), ("off", false)] {
        let mut child = ferro()
            .args(["run", "--arch", "x86_64", "--memory", "64M", "--cpus", "2"])
            .args(["--seccomp", flag, "--append", "test=idle", "--kernel"])
            .arg(&guests().pvh)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("IDLE") {
            let n = std::io::Read::read(&mut out, &mut b).unwrap();
            assert!(
                n > 0,
                "guest output ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend(&b[..n]);
        }
        let task = format!("/proc/{}/task", child.id());
        let mut threads = Vec::new();
        for t in std::fs::read_dir(&task).unwrap().flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap();
            let status = std::fs::read_to_string(t.path().join("status")).unwrap();
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .unwrap()
                .trim()
                .to_string();
            threads.push((comm.trim().to_string(), mode));
        }
        let _ = child.kill();
        let _ = child.wait();
        let names: Vec<&str> = threads.iter().map(|t| t.0.as_str()).collect();
        assert!(
            names.contains(&"vcpu0") && names.contains(&"vcpu1"),
            "{threads:?}"
        );
        for (name, mode) in &threads {
            // 2 = SECCOMP_MODE_FILTER.
            assert_eq!(
                mode == "2",
                want,
                "--seccomp {flag}: thread {name}: {threads:?}"
            );
        }
    }
}

/// `--control` on KVM: status, pause/resume, and `powerdown` pressing the
/// ACPI power button; the guest (polling PM1_STS) then writes the DSDT's S5
/// and ferro exits 0 with reason `poweroff` in the status file.
#[test]
fn control_socket_pause_resume_and_powerdown() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ctl");
    let status = dir.path().join("status.json");
    let mut child = ferro()
        .args([
            "run", "--arch", "x86_64", "--memory", "64M", "--name", "kvmtest",
        ])
        .arg("--control")
        .arg(&sock)
        .arg("--status-file")
        .arg(&status)
        .args(["--append", "test=powerbtn", "--kernel"])
        .arg(&guests().pvh)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut b = [0u8; 256];
    let mut read_until = |want: &str, seen: &mut Vec<u8>| {
        while !String::from_utf8_lossy(seen).contains(want) {
            let n = out.read(&mut b).unwrap();
            assert!(n > 0, "no {want}: {}", String::from_utf8_lossy(seen));
            seen.extend(&b[..n]);
        }
    };
    read_until("PWRBTN-ARMED", &mut seen);
    let c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    let mut req = |line: &str| -> String {
        writeln!(w, "{line}").unwrap();
        let mut resp = String::new();
        r.read_line(&mut resp).unwrap();
        resp
    };
    let st = req(r#"{"cmd":"status"}"#);
    assert!(
        st.contains(r#""state":"running""#) && st.contains(r#""arch":"x86_64""#),
        "{st}"
    );
    assert!(st.contains(r#""name":"kvmtest""#), "{st}");
    assert_eq!(req(r#"{"cmd":"pause"}"#).trim(), r#"{"ok":true}"#);
    assert!(req(r#"{"cmd":"status"}"#).contains(r#""state":"paused""#));
    assert_eq!(req(r#"{"cmd":"resume"}"#).trim(), r#"{"ok":true}"#);
    let pd = req(r#"{"cmd":"powerdown","id":7}"#);
    assert!(
        pd.contains(r#""delivered":true"#) && pd.contains(r#""id":7"#),
        "{pd}"
    );
    read_until("ACPI-S5=5", &mut seen);
    let code = child.wait().unwrap().code();
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.contains("PWRBTN-PRESSED"), "{text}");
    assert_eq!(code, Some(0), "{text}");
    let st = std::fs::read_to_string(&status).unwrap();
    assert!(st.contains(r#""reason":"poweroff""#), "{st}");
}

#[test]
fn memory_across_the_mmio_hole() {
    // 3.5 GiB: 3 GiB below the hole, 512 MiB above 4 GiB (guest RAM is
    // mmap'd lazily, so this costs the host nothing).
    let mut c = ferro();
    let o = c
        .args(["run", "--arch", "x86_64", "--memory", "3584M", "--kernel"])
        .arg(&guests().elf64)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = assert_ok(&o);
    assert_eq!(line(&out, "E820="), "4");
}

#[test]
fn virtio_blk_reads_and_writes_a_qcow2_image() {
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("src.raw");
    let mut data = vec![0u8; 1 << 20];
    data[..16].copy_from_slice(b"FERRO-SECTOR-0!!");
    std::fs::write(&raw, &data).unwrap();
    let qcow = dir.path().join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .expect("qemu-img (scripts/deps test) is needed");
    assert!(st.success());
    let o = run(
        &g.elf64,
        &["--append", "test=blk", "--disk", qcow.to_str().unwrap()],
    );
    let out = assert_ok(&o);
    assert!(
        line(&out, "CMDLINE=").ends_with("virtio_mmio.device=4K@0xd0000000:5"),
        "{out}"
    );
    assert_eq!(line(&out, "BLK capacity="), "2048");
    assert_eq!(line(&out, "BLK0="), "FERRO-SECTOR-0!!");
    assert!(out.contains("BLK OK"), "{out}");
    // The device raised its interrupt (InterruptStatus bit 0) per request.
    assert!(out.contains("BLK isr=1"), "{out}");
    // The host sees the guest's write, through qemu-img.
    let back = dir.path().join("back.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&qcow)
        .arg(&back)
        .status()
        .unwrap();
    assert!(st.success());
    let b = std::fs::read(&back).unwrap();
    let msg = b"written by the KVM test guest";
    assert_eq!(&b[512..512 + msg.len()], msg);
    assert!(b[512 + msg.len()..1024].iter().all(|&x| x == 0));
    assert_eq!(&b[..16], b"FERRO-SECTOR-0!!");
    let st = Command::new("qemu-img")
        .arg("check")
        .arg(&qcow)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stdout)
    );
}

fn refused(kernel: &Path, want: &str) {
    let o = run(kernel, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).is_empty(), "guest ran: {}", stdout(&o));
    let e = stderr(&o);
    assert!(e.contains(want), "expected {want:?} in: {e}");
}

#[test]
fn bad_kernels_are_refused_before_any_vcpu_runs() {
    let g = guests();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a kernel\n".repeat(100)).unwrap();
    refused(&text, "not a Linux kernel");

    let payload = std::fs::read(g.dir.join("guest64.bin")).unwrap();
    let full = bzimage(&payload, 0x020f, 1);
    let trunc = dir.path().join("trunc.bzImage");
    std::fs::write(&trunc, &full[..full.len() - 100]).unwrap();
    refused(&trunc, "truncated bzImage");

    let old = dir.path().join("old.bzImage");
    std::fs::write(&old, bzimage(&payload, 0x0206, 0)).unwrap();
    refused(&old, "boot protocol 2.06 has no 64-bit entry");

    let k32 = dir.path().join("k32.bzImage");
    std::fs::write(&k32, bzimage(&payload, 0x020f, 0)).unwrap();
    refused(&k32, "XLF_KERNEL_64");

    let o = run(&g.elf64, &["--cpus", "0"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn missing_kvm_device_suggests_emu() {
    let o = ferro()
        .args(["run", "--arch", "x86_64", "--kernel"])
        .arg(&guests().elf64)
        .env("FERRO_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("/nonexistent/kvm does not exist"), "{e}");
    assert!(e.contains("--accel emu"), "{e}");
}

#[test]
fn accel_and_arch_mismatch() {
    let o = ferro()
        .args([
            "run", "--arch", "x86_64", "--accel", "emu", "--kernel", "/x",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--accel kvm"), "{}", stderr(&o));
}

#[test]
fn virtio_interrupts_reach_the_guest_through_the_ioapic() {
    // The guest routes IOAPIC pin 5 (virtio slot 0, level) to a handler
    // that acks the device; KVM_IRQ_LINE must deliver it.
    let dir = tempfile::tempdir().unwrap();
    let qcow = dir.path().join("d.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("1M")
        .status()
        .expect("qemu-img (scripts/deps test) is needed");
    assert!(st.success());
    let o = run(
        &guests().elf64,
        &["--append", "test=irq", "--disk", qcow.to_str().unwrap()],
    );
    let out = assert_ok(&o);
    assert!(out.contains("BLK OK"), "{out}");
    let total: u64 = line(&out, "IRQS=").parse().unwrap();
    let empty: u64 = line(&out, "IRQS-EMPTY=").parse().unwrap();
    // Three requests; completions may coalesce into fewer interrupts, but
    // at least one must have found the used-ring bit set.
    assert!(total - empty >= 1, "{out}");
}

#[test]
fn i8042_reset_ends_the_run_with_zero() {
    let o = run(&guests().pvh, &["--append", "test=reset"]);
    let out = stdout(&o);
    assert!(out.contains("RESET"), "{out}");
    assert!(!out.contains("DONE"), "{out}");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
