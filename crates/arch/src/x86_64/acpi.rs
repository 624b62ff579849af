//! ACPI tables for the x86-64 machine and the PM1 register block they
//! describe, so a guest finds its CPUs and interrupt routing (MADT), powers
//! off (`\_S5` + PM1a_CNT) and sees a power button (fixed-feature,
//! PM1_STS.PWRBTN, raising the SCI).
//!
//! Layout at [`ACPI_BASE`] (0xE0000, inside the e820-reserved BIOS area that
//! Linux also scans for the RSDP): RSDP, XSDT, FADT, FACS, MADT, DSDT. The
//! FADT is a classic (not HW-reduced) one: PM1a event block at
//! [`PM1A_EVT`], PM1a control at [`PM1A_CNT`] (QEMU's port: the SLP_EN
//! write of the bare test guests keeps working), PM timer at [`PM_TMR`],
//! SCI on [`SCI_IRQ`]. `SMI_CMD` is 0: the machine is always in ACPI mode
//! (SCI_EN reads 1). Reset goes through the i8042 (FADT RESET_REG = port
//! 0x64, value 0xfe).

use std::sync::Arc;
use std::time::Instant;

use devices::{BusDevice, IrqLine};

use super::layout::{IOAPIC, LAPIC, VIRTIO_IRQS};
use super::{PowerEvent, PowerHandler};

pub const ACPI_BASE: u64 = 0xe_0000;
/// Everything fits below this size (checked when building).
pub const ACPI_SIZE: usize = 0x2000;
pub const PM1A_EVT: u16 = 0x600;
pub const PM1A_CNT: u16 = 0x604;
pub const PM_TMR: u16 = 0x608;
/// SCI: IRQ 12 (no PS/2 mouse here; 9 is a virtio slot), level, active high.
pub const SCI_IRQ: u32 = 12;
/// The `\_S5` sleep type the DSDT names (written to PM1a_CNT.SLP_TYP).
pub const S5_SLP_TYP: u16 = 5;

const OEM_ID: &[u8; 6] = b"FERRO ";
const OEM_TABLE: &[u8; 8] = b"FERROVM ";

const RSDP_AT: usize = 0;
const XSDT_AT: usize = 0x40;
const FADT_AT: usize = 0x100;
const FACS_AT: usize = 0x240;
const MADT_AT: usize = 0x300;
const DSDT_AT: usize = 0x1000;

fn checksum(b: &[u8]) -> u8 {
    0u8.wrapping_sub(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)))
}

/// A table: the 36-byte SDT header, then `body`; length and checksum set.
fn sdt(sig: &[u8; 4], rev: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend(sig);
    t.extend(((36 + body.len()) as u32).to_le_bytes());
    t.push(rev);
    t.push(0);
    t.extend(OEM_ID);
    t.extend(OEM_TABLE);
    t.extend(1u32.to_le_bytes());
    t.extend(b"FRRO");
    t.extend(1u32.to_le_bytes());
    t.extend(body);
    t[9] = checksum(&t);
    t
}

/// A Generic Address Structure in system I/O space.
fn gas_io(bits: u8, access: u8, port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // SystemIO
    g[1] = bits;
    g[3] = access;
    g[4..12].copy_from_slice(&(port as u64).to_le_bytes());
    g
}

fn put(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

fn fadt() -> Vec<u8> {
    // Offsets below are from the table start (the body starts at 36).
    let mut f = vec![0u8; 276];
    let a = |o: usize| o - 36;
    let base = ACPI_BASE as usize;
    // FIRMWARE_CTRL stays 0: X_FIRMWARE_CTRL names the FACS (both set
    // makes Linux map it twice).
    put(&mut f, a(40), &((base + DSDT_AT) as u32).to_le_bytes());
    f[a(45)] = 0; // preferred PM profile: unspecified
    put(&mut f, a(46), &(SCI_IRQ as u16).to_le_bytes());
    // SMI_CMD 0: no mode switch, always ACPI.
    put(&mut f, a(56), &(PM1A_EVT as u32).to_le_bytes());
    put(&mut f, a(64), &(PM1A_CNT as u32).to_le_bytes());
    put(&mut f, a(76), &(PM_TMR as u32).to_le_bytes());
    f[a(88)] = 4; // PM1_EVT_LEN
    f[a(89)] = 2; // PM1_CNT_LEN
    f[a(91)] = 4; // PM_TMR_LEN
    put(&mut f, a(96), &101u16.to_le_bytes()); // no C2
    put(&mut f, a(98), &1001u16.to_le_bytes()); // no C3
                                                // IAPC_BOOT_ARCH: legacy devices (COM1), VGA not present, no CMOS RTC.
                                                // No 8042 bit: the i8042 here only resets.
    put(
        &mut f,
        a(109),
        &((1u16 << 0) | (1 << 2) | (1 << 5)).to_le_bytes(),
    );
    // Flags: WBINVD, SLP_BUTTON (no fixed sleep button; the power button is
    // the fixed one), RESET_REG_SUP.
    put(
        &mut f,
        a(112),
        &((1u32 << 0) | (1 << 5) | (1 << 10)).to_le_bytes(),
    );
    put(&mut f, a(116), &gas_io(8, 1, 0x64));
    f[a(128)] = 0xfe;
    f[a(131)] = 1; // FADT minor version (6.1)
    put(&mut f, a(132), &((base + FACS_AT) as u64).to_le_bytes());
    put(&mut f, a(140), &((base + DSDT_AT) as u64).to_le_bytes());
    put(&mut f, a(148), &gas_io(32, 2, PM1A_EVT));
    put(&mut f, a(172), &gas_io(16, 2, PM1A_CNT));
    put(&mut f, a(208), &gas_io(32, 3, PM_TMR));
    put(&mut f, a(268), b"FERROVMM");
    f.truncate(276 - 36);
    sdt(b"FACP", 6, &f)
}

fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    put(&mut f, 0, b"FACS");
    put(&mut f, 4, &64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

fn madt(cpus: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend((LAPIC as u32).to_le_bytes());
    b.extend(1u32.to_le_bytes()); // PCAT_COMPAT: 8259s present
    for id in 0..cpus as u8 {
        b.extend([0, 8, id, id, 1, 0, 0, 0]); // processor LAPIC, enabled
    }
    let ioapic_id = cpus as u8; // as in the MP table
    b.extend([1, 12, ioapic_id, 0]);
    b.extend((IOAPIC as u32).to_le_bytes());
    b.extend(0u32.to_le_bytes());
    let mut iso = |src: u8, gsi: u32, flags: u16| {
        b.extend([2, 10, 0, src]);
        b.extend(gsi.to_le_bytes());
        b.extend(flags.to_le_bytes());
    };
    iso(0, 2, 0); // the PIT on pin 2, as on every PC
                  // Active high, level: the SCI and the ISA-range virtio-mmio lines.
    iso(SCI_IRQ as u8, SCI_IRQ, 0b1101);
    for &irq in VIRTIO_IRQS.iter().filter(|&&i| i < 16) {
        iso(irq as u8, irq, 0b1101);
    }
    b.extend([4, 6, 0xff, 0, 0, 1]); // LINT1 = NMI on every LAPIC
    sdt(b"APIC", 4, &b)
}

/// The DSDT's AML: `Name (\_S5, Package () { 5, 5, 0, 0 })`.
fn dsdt() -> Vec<u8> {
    let t = S5_SLP_TYP as u8;
    let mut aml = vec![0x08];
    aml.extend(b"_S5_");
    // PackageOp, PkgLength (8: itself, the count and 6 bytes of elements),
    // NumElements 4, BytePrefix 5, BytePrefix 5, Zero, Zero.
    aml.extend([0x12, 0x08, 0x04, 0x0a, t, 0x0a, t, 0x00, 0x00]);
    sdt(b"DSDT", 2, &aml)
}

/// All tables, to be written at [`ACPI_BASE`]; the RSDP is first.
pub fn build(cpus: usize) -> Vec<u8> {
    let base = ACPI_BASE;
    let mut out = vec![0u8; ACPI_SIZE];
    let mut xsdt_body = Vec::new();
    for at in [FADT_AT, MADT_AT] {
        xsdt_body.extend((base + at as u64).to_le_bytes());
    }
    let tables = [
        (XSDT_AT, sdt(b"XSDT", 1, &xsdt_body)),
        (FADT_AT, fadt()),
        (FACS_AT, facs()),
        (MADT_AT, madt(cpus)),
        (DSDT_AT, dsdt()),
    ];
    let mut end = 0;
    for (at, t) in &tables {
        assert!(*at >= end, "ACPI tables overlap at {at:#x}");
        put(&mut out, *at, t);
        end = at + t.len();
    }
    let mut rsdp = [0u8; 36];
    put(&mut rsdp, 0, b"RSD PTR ");
    put(&mut rsdp, 9, OEM_ID);
    rsdp[15] = 2; // ACPI 2.0+: use the XSDT
    put(&mut rsdp, 20, &36u32.to_le_bytes());
    put(&mut rsdp, 24, &(base + XSDT_AT as u64).to_le_bytes());
    rsdp[8] = checksum(&rsdp[..20]);
    rsdp[32] = checksum(&rsdp);
    put(&mut out, RSDP_AT, &rsdp);
    out.truncate(end);
    out
}

/// PM1 status bits.
const PWRBTN: u16 = 1 << 8;
const WAK: u16 = 1 << 15;
/// PM1 control bits.
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;

/// The PM1a event/control blocks and the PM timer, on ports
/// [`PM1A_EVT`]..[`PM_TMR`]+4 (12 ports, mapped as one device).
pub struct AcpiPm {
    sts: u16,
    en: u16,
    cnt: u16,
    sci: Arc<dyn IrqLine>,
    on: PowerHandler,
    t0: Instant,
}

impl AcpiPm {
    pub fn new(sci: Arc<dyn IrqLine>, on: PowerHandler) -> Self {
        AcpiPm {
            sts: 0,
            en: 0,
            cnt: SCI_EN,
            sci,
            on,
            t0: Instant::now(),
        }
    }

    fn update_sci(&self) {
        self.sci.set_level(self.sts & self.en & PWRBTN != 0);
    }

    /// Presses the power button; true when the guest has enabled its event
    /// (an OS that listens), false when nothing will see it.
    pub fn power_button(&mut self) -> bool {
        self.sts |= PWRBTN;
        self.update_sci();
        self.en & PWRBTN != 0
    }

    fn regs(&self) -> [u8; 6] {
        let mut r = [0u8; 6];
        r[0..2].copy_from_slice(&self.sts.to_le_bytes());
        r[2..4].copy_from_slice(&self.en.to_le_bytes());
        r[4..6].copy_from_slice(&self.cnt.to_le_bytes());
        r
    }

    fn timer(&self) -> u32 {
        // 3.579545 MHz, 24 bits (FADT TMR_VAL_EXT clear).
        let ns = self.t0.elapsed().as_nanos();
        ((ns * 3_579_545 / 1_000_000_000) as u32) & 0xff_ffff
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        if o >= 8 {
            let t = self.timer().to_le_bytes();
            for (i, d) in data.iter_mut().enumerate() {
                *d = t.get(o - 8 + i).copied().unwrap_or(0);
            }
            return;
        }
        let r = self.regs();
        for (i, d) in data.iter_mut().enumerate() {
            *d = r.get(o + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let o = offset as usize;
        if o >= 6 {
            return; // the timer is read-only
        }
        // Merge the written bytes into a 16-bit view of each register.
        let mut new = self.regs();
        let mut touched = [false; 6];
        for (i, &b) in data.iter().enumerate() {
            if o + i < 6 {
                new[o + i] = b;
                touched[o + i] = true;
            }
        }
        if touched[0] || touched[1] {
            // Write 1 to clear, only in the bytes written.
            let mut clear = 0u16;
            if touched[0] {
                clear |= new[0] as u16;
            }
            if touched[1] {
                clear |= (new[1] as u16) << 8;
            }
            self.sts &= !clear;
        }
        if touched[2] || touched[3] {
            self.en = u16::from_le_bytes([new[2], new[3]]) & PWRBTN;
        }
        if touched[4] || touched[5] {
            let v = u16::from_le_bytes([new[4], new[5]]);
            self.cnt = (v & !SLP_EN) | SCI_EN;
            if v & SLP_EN != 0 {
                let typ = (v >> 10) & 7;
                // S5 as the DSDT says, or 0 (QEMU's S5 value, which the
                // bare test guests write).
                if typ == S5_SLP_TYP || typ == 0 {
                    (self.on)(PowerEvent::Poweroff);
                } else {
                    tracing::warn!("guest asked for sleep type {typ}; only S5 is implemented");
                    self.sts |= WAK;
                }
            }
        }
        self.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    fn table(all: &[u8], at: u64) -> &[u8] {
        let o = (at - ACPI_BASE) as usize;
        let len = u32::from_le_bytes(all[o + 4..o + 8].try_into().unwrap()) as usize;
        &all[o..o + len]
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let all = build(4);
        assert_eq!(&all[..8], b"RSD PTR ");
        assert_eq!(checksum(&all[..20]), 0);
        assert_eq!(checksum(&all[..36]), 0);
        let xsdt_at = u64::from_le_bytes(all[24..32].try_into().unwrap());
        let xsdt = table(&all, xsdt_at);
        assert_eq!(&xsdt[..4], b"XSDT");
        let mut sigs = Vec::new();
        for p in xsdt[36..].chunks(8) {
            let t = table(&all, u64::from_le_bytes(p.try_into().unwrap()));
            assert_eq!(checksum(t), 0, "{:?}", &t[..4]);
            sigs.push(t[..4].to_vec());
            if &t[..4] == b"FACP" {
                assert_eq!(t.len(), 276);
                let dsdt = table(&all, u64::from_le_bytes(t[140..148].try_into().unwrap()));
                assert_eq!(checksum(dsdt), 0);
                let s5 = dsdt.windows(4).position(|w| w == b"_S5_").unwrap();
                assert_eq!(dsdt[s5 + 4..s5 + 9], [0x12, 0x08, 0x04, 0x0a, 5]);
            }
            if &t[..4] == b"APIC" {
                let lapics = t[44..].windows(2).filter(|w| w == &[0, 8]).count();
                assert!(lapics >= 4);
            }
        }
        assert_eq!(sigs, vec![b"FACP".to_vec(), b"APIC".to_vec()]);
        assert!(all.len() <= ACPI_SIZE);
    }

    struct Level(AtomicBool);
    impl IrqLine for Level {
        fn set_level(&self, l: bool) {
            self.0.store(l, Ordering::SeqCst);
        }
    }

    #[test]
    fn power_button_and_s5() {
        let sci = Arc::new(Level(AtomicBool::new(false)));
        let ev = Arc::new(Mutex::new(Vec::new()));
        let e2 = ev.clone();
        let mut pm = AcpiPm::new(sci.clone(), Arc::new(move |e| e2.lock().unwrap().push(e)));
        // Not enabled yet: latched, no SCI, reported as undelivered.
        assert!(!pm.power_button());
        assert!(!sci.0.load(Ordering::SeqCst));
        pm.write(2, &PWRBTN.to_le_bytes());
        assert!(sci.0.load(Ordering::SeqCst));
        let mut s = [0u8; 2];
        pm.read(0, &mut s);
        assert_eq!(u16::from_le_bytes(s) & PWRBTN, PWRBTN);
        pm.write(0, &PWRBTN.to_le_bytes()); // write 1 to clear
        assert!(!sci.0.load(Ordering::SeqCst));
        pm.read(4, &mut s);
        assert_eq!(u16::from_le_bytes(s) & SCI_EN, SCI_EN);
        // S3 is not implemented: no event.
        pm.write(4, &((3u16 << 10) | SLP_EN).to_le_bytes());
        assert!(ev.lock().unwrap().is_empty());
        pm.write(4, &((S5_SLP_TYP << 10) | SLP_EN).to_le_bytes());
        assert_eq!(*ev.lock().unwrap(), vec![PowerEvent::Poweroff]);
    }
}

/// Each table as a file for `iasl -d` (ACPICA's disassembler), which
/// checks lengths, checksums and field values and decodes the AML.
#[cfg(test)]
mod iasl {
    use super::*;
    use std::process::Command;

    #[test]
    fn iasl_disassembles_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let all = build(2);
        let mut offs = vec![
            ("xsdt", XSDT_AT),
            ("facp", FADT_AT),
            ("apic", MADT_AT),
            ("dsdt", DSDT_AT),
        ];
        offs.push(("facs", FACS_AT));
        let mut text = String::new();
        for (name, at) in offs {
            let len = u32::from_le_bytes(all[at + 4..at + 8].try_into().unwrap()) as usize;
            let f = dir.path().join(format!("{name}.dat"));
            std::fs::write(&f, &all[at..at + len]).unwrap();
            let o = Command::new("iasl")
                .arg("-d")
                .arg(&f)
                .current_dir(dir.path())
                .output()
                .expect("iasl (acpica-tools, scripts/deps) is needed");
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(o.status.success(), "iasl -d {name}: {log}");
            assert!(
                !log.contains("Error") && !log.contains("Warning"),
                "iasl -d {name}: {log}"
            );
            let dsl = std::fs::read_to_string(dir.path().join(format!("{name}.dsl"))).unwrap();
            assert!(!dsl.contains("Incorrect checksum"), "{dsl}");
            text.push_str(&dsl);
        }
        for want in [
            "PM1A Event Block Address : 00000600",
            "PM1A Control Block Address : 00000604",
            "SCI Interrupt : 000C",
            "Hardware Reduced (V5) : 0",
            "Name (_S5, Package (0x04)",
            "Local Apic Address : FEE00000",
            "I/O Apic ID : 02",
        ] {
            assert!(text.contains(want), "no {want:?} in:\n{text}");
        }
    }
}
