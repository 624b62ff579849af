//! The device tree for the `virt`-like machine, built with `vm-fdt`. It lists
//! only what the machine implements: the harts (ISA and MMU from the CPU
//! backend's constants), RAM, CLINT, PLIC, UART, RTC, syscon poweroff/reboot,
//! the crash signals (pvpanic-mmio, and a GPIO LED that Linux's panic
//! trigger lights) and the virtio-mmio slots that have a device attached.

use vm_fdt::{FdtWriter, FdtWriterResult};

use super::layout::*;
use super::plic::PLIC_NDEV;

pub struct FdtParams<'a> {
    pub harts: usize,
    pub ram_size: u64,
    pub cmdline: &'a str,
    pub initrd: Option<(u64, u64)>,
    pub rng_seed: [u8; 64],
    /// Indices of occupied virtio-mmio slots.
    pub virtio_slots: &'a [usize],
}

const PH_PLIC: u32 = 1;
const PH_TEST: u32 = 2;
const PH_GPIO: u32 = 3;
const fn ph_intc(hart: usize) -> u32 {
    0x10 + hart as u32
}
const fn ph_cpu(hart: usize) -> u32 {
    0x20 + hart as u32
}

fn reg(base: u64, len: u64) -> [u64; 2] {
    [base, len]
}

/// Optional additions to the tree (machine identity, management agent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdtExtra {
    /// Root `serial-number`: the machine UUID (`--uuid`), as QEMU's
    /// `-uuid` shows it on SMBIOS machines.
    pub serial_number: Option<String>,
    /// The virtio-mmio slot of the management agent's virtio-console:
    /// `/chosen/ferrovisor,agent-console` names its node, which tells the
    /// guest's init to run its agent on the last hvc.
    pub agent_console: Option<usize>,
}

pub fn build(p: &FdtParams) -> FdtWriterResult<Vec<u8>> {
    build_with(p, &FdtExtra::default())
}

pub fn build_with(p: &FdtParams, x: &FdtExtra) -> FdtWriterResult<Vec<u8>> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "riscv-virtio")?;
    f.property_string("model", "ferrovisor,riscv-virt")?;
    if let Some(sn) = &x.serial_number {
        f.property_string("serial-number", sn)?;
    }

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", p.cmdline)?;
    f.property_string("stdout-path", &format!("/soc/serial@{UART0_BASE:x}"))?;
    f.property("rng-seed", &p.rng_seed)?;
    if let Some((start, end)) = p.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    if let Some(i) = x.agent_console {
        f.property_string(
            "ferrovisor,agent-console",
            &format!("/soc/virtio_mmio@{:x}", virtio_base(i)),
        )?;
    }
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{RAM_BASE:x}"))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &reg(RAM_BASE, p.ram_size))?;
    f.end_node(mem)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    f.property_u32("timebase-frequency", TIMEBASE_HZ as u32)?;
    for h in 0..p.harts {
        let cpu = f.begin_node(&format!("cpu@{h}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_u32("reg", h as u32)?;
        f.property_string("status", "okay")?;
        f.property_string("compatible", "riscv")?;
        f.property_string("riscv,isa", riscv_emu::ISA_STRING)?;
        f.property_string("riscv,isa-base", riscv_emu::ISA_BASE)?;
        f.property_string_list(
            "riscv,isa-extensions",
            riscv_emu::ISA_EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        )?;
        f.property_string("mmu-type", riscv_emu::MMU_TYPE)?;
        f.property_phandle(ph_cpu(h))?;
        let intc = f.begin_node("interrupt-controller")?;
        f.property_u32("#interrupt-cells", 1)?;
        f.property_null("interrupt-controller")?;
        f.property_string("compatible", "riscv,cpu-intc")?;
        f.property_phandle(ph_intc(h))?;
        f.end_node(intc)?;
        f.end_node(cpu)?;
    }
    let map = f.begin_node("cpu-map")?;
    let cluster = f.begin_node("cluster0")?;
    for h in 0..p.harts {
        let core = f.begin_node(&format!("core{h}"))?;
        f.property_u32("cpu", ph_cpu(h))?;
        f.end_node(core)?;
    }
    f.end_node(cluster)?;
    f.end_node(map)?;
    f.end_node(cpus)?;

    let soc = f.begin_node("soc")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "simple-bus")?;
    f.property_null("ranges")?;

    // Linux creates (and so probes) virtio-mmio devices in node order:
    // ascending slots make slot 0 virtio0, so the first --disk is vda.
    for &i in p.virtio_slots {
        let base = virtio_base(i);
        let n = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &reg(base, VIRTIO_SIZE))?;
        f.property_u32("interrupt-parent", PH_PLIC)?;
        f.property_u32("interrupts", virtio_irq(i))?;
        f.end_node(n)?;
    }

    let test = f.begin_node(&format!("test@{SYSCON_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec![
            "sifive,test1".into(),
            "sifive,test0".into(),
            "syscon".into(),
        ],
    )?;
    f.property_array_u64("reg", &reg(SYSCON_BASE, devices::syscon::SYSCON_MMIO_LEN))?;
    f.property_phandle(PH_TEST)?;
    f.end_node(test)?;
    for (name, compat, value) in [
        (
            "poweroff",
            "syscon-poweroff",
            devices::syscon::SYSCON_POWEROFF,
        ),
        ("reboot", "syscon-reboot", devices::syscon::SYSCON_RESET),
    ] {
        let n = f.begin_node(name)?;
        f.property_string("compatible", compat)?;
        f.property_u32("regmap", PH_TEST)?;
        f.property_u32("offset", 0)?;
        f.property_u32("value", value)?;
        f.end_node(n)?;
    }

    let rtc = f.begin_node(&format!("rtc@{RTC_BASE:x}"))?;
    f.property_string("compatible", "google,goldfish-rtc")?;
    f.property_array_u64("reg", &reg(RTC_BASE, devices::rtc::RTC_MMIO_LEN))?;
    f.property_u32("interrupt-parent", PH_PLIC)?;
    f.property_u32("interrupts", RTC_IRQ)?;
    f.end_node(rtc)?;

    // Linux's own way to tell the platform it panicked when the kernel has no
    // pvpanic driver (Debian's riscv64 kernel has none): the `panic` LED
    // trigger (built in) lights every LED marked `panic-indicator`; the LED
    // is on pin 0 of a SiFive GPIO controller (gpio-sifive is built in;
    // gpio-leds is the leds_gpio module).
    let gpio = f.begin_node(&format!("gpio@{GPIO_BASE:x}"))?;
    f.property_string("compatible", "sifive,gpio0")?;
    f.property_array_u64("reg", &reg(GPIO_BASE, devices::gpio::GPIO_MMIO_LEN))?;
    f.property_u32("interrupt-parent", PH_PLIC)?;
    f.property_u32("interrupts", GPIO_IRQ)?;
    f.property_null("gpio-controller")?;
    f.property_u32("#gpio-cells", 2)?;
    f.property_null("interrupt-controller")?;
    f.property_u32("#interrupt-cells", 2)?;
    f.property_phandle(PH_GPIO)?;
    f.end_node(gpio)?;

    let pvpanic = f.begin_node(&format!("pvpanic@{PVPANIC_BASE:x}"))?;
    f.property_string("compatible", "qemu,pvpanic-mmio")?;
    f.property_array_u64(
        "reg",
        &reg(PVPANIC_BASE, devices::pvpanic::PVPANIC_MMIO_LEN),
    )?;
    f.end_node(pvpanic)?;

    let uart = f.begin_node(&format!("serial@{UART0_BASE:x}"))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &reg(UART0_BASE, devices::serial::SERIAL_MMIO_LEN))?;
    f.property_u32("clock-frequency", 3_686_400)?;
    f.property_u32("interrupt-parent", PH_PLIC)?;
    f.property_u32("interrupts", UART0_IRQ)?;
    f.end_node(uart)?;

    let plic = f.begin_node(&format!("plic@{PLIC_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    f.property_array_u64("reg", &reg(PLIC_BASE, super::plic::PLIC_MMIO_LEN))?;
    f.property_u32("#address-cells", 0)?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_null("interrupt-controller")?;
    f.property_u32("riscv,ndev", PLIC_NDEV)?;
    let mut ext = Vec::new();
    for h in 0..p.harts {
        // Context 2h: M external (cause 11); 2h + 1: S external (cause 9).
        ext.extend_from_slice(&[ph_intc(h), 11, ph_intc(h), 9]);
    }
    f.property_array_u32("interrupts-extended", &ext)?;
    f.property_phandle(PH_PLIC)?;
    f.end_node(plic)?;

    let clint = f.begin_node(&format!("clint@{CLINT_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,clint0".into(), "riscv,clint0".into()],
    )?;
    f.property_array_u64("reg", &reg(CLINT_BASE, riscv_emu::ACLINT_SIZE))?;
    let mut ext = Vec::new();
    for h in 0..p.harts {
        // M software (3) and M timer (7) interrupts.
        ext.extend_from_slice(&[ph_intc(h), 3, ph_intc(h), 7]);
    }
    f.property_array_u32("interrupts-extended", &ext)?;
    f.end_node(clint)?;

    f.end_node(soc)?;

    let leds = f.begin_node("leds")?;
    f.property_string("compatible", "gpio-leds")?;
    let led = f.begin_node("led-panic")?;
    f.property_string("label", "panic")?;
    f.property_array_u32("gpios", &[PH_GPIO, 0, 0])?;
    f.property_string("default-state", "off")?;
    f.property_null("panic-indicator")?;
    f.end_node(led)?;
    f.end_node(leds)?;

    f.end_node(root)?;
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decompiles with dtc (installed by scripts/deps test); fails loudly without it.
    pub fn dts(dtb: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.dtb");
        std::fs::write(&p, dtb).unwrap();
        let out = std::process::Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&p)
            .output()
            .expect("dtc is required for this test (apt package device-tree-compiler; scripts/deps test installs it)");
        assert!(
            out.status.success(),
            "dtc rejected the DTB: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn device_tree_contents() {
        let dtb = build(&FdtParams {
            harts: 2,
            ram_size: 512 << 20,
            cmdline: "console=ttyS0 quiet",
            initrd: Some((0x9f00_0000, 0x9f80_0000)),
            rng_seed: [7; 64],
            virtio_slots: &[0, 2],
        })
        .unwrap();
        let s = dts(&dtb);
        for want in [
            "bootargs = \"console=ttyS0 quiet\";",
            "stdout-path = \"/soc/serial@10000000\";",
            "linux,initrd-start = <0x00 0x9f000000>;",
            "linux,initrd-end = <0x00 0x9f800000>;",
            "rng-seed = <0x7070707 0x7070707",
            "memory@80000000 {",
            "reg = <0x00 0x80000000 0x00 0x20000000>;",
            "timebase-frequency = <0x989680>;",
            "cpu@0 {",
            "cpu@1 {",
            "riscv,isa = \"rv64imafdc_zicntr_zicsr_zifencei_sstc\";",
            "riscv,isa-base = \"rv64i\";",
            "riscv,isa-extensions = \"i\\0m\\0a\\0f\\0d\\0c\\0zicntr\\0zicsr\\0zifencei\\0sstc\";",
            "mmu-type = \"riscv,sv48\";",
            "compatible = \"riscv,cpu-intc\";",
            "core1 {",
            "compatible = \"ns16550a\";",
            "compatible = \"google,goldfish-rtc\";",
            "compatible = \"sifive,test1\\0sifive,test0\\0syscon\";",
            "compatible = \"syscon-poweroff\";",
            "value = <0x5555>;",
            "compatible = \"syscon-reboot\";",
            "value = <0x7777>;",
            "compatible = \"sifive,plic-1.0.0\\0riscv,plic0\";",
            "riscv,ndev = <0x5f>;",
            // hart 0 M/S, hart 1 M/S external interrupts.
            "interrupts-extended = <0x10 0x0b 0x10 0x09 0x11 0x0b 0x11 0x09>;",
            "compatible = \"sifive,clint0\\0riscv,clint0\";",
            "interrupts-extended = <0x10 0x03 0x10 0x07 0x11 0x03 0x11 0x07>;",
            "virtio_mmio@10001000 {",
            "virtio_mmio@10003000 {",
            "compatible = \"qemu,pvpanic-mmio\";",
            "reg = <0x00 0x103000 0x00 0x02>;",
            "compatible = \"sifive,gpio0\";",
            "interrupts = <0x0c>;",
            "compatible = \"gpio-leds\";",
            "gpios = <0x03 0x00 0x00>;",
            "panic-indicator;",
        ] {
            assert!(s.contains(want), "missing {want:?} in:\n{s}");
        }
        // Only attached virtio slots are advertised, lowest first (probe order).
        assert!(!s.contains("virtio_mmio@10002000"));
        assert!(s.find("virtio_mmio@10001000").unwrap() < s.find("virtio_mmio@10003000").unwrap());
        // Without an initrd, /chosen has no initrd range.
        let dtb = build(&FdtParams {
            harts: 1,
            ram_size: 64 << 20,
            cmdline: "",
            initrd: None,
            rng_seed: [0; 64],
            virtio_slots: &[],
        })
        .unwrap();
        let s = dts(&dtb);
        assert!(!s.contains("initrd") && !s.contains("virtio_mmio") && !s.contains("cpu@1"));
        assert!(!s.contains("serial-number") && !s.contains("agent"));
        // Identity and the agent console, when asked for.
        let dtb = build_with(
            &FdtParams {
                harts: 1,
                ram_size: 64 << 20,
                cmdline: "",
                initrd: None,
                rng_seed: [0; 64],
                virtio_slots: &[0, 1],
            },
            &FdtExtra {
                serial_number: Some("6d1c7e0a-3b1f-4c2e-9a55-0123456789ab".into()),
                agent_console: Some(1),
            },
        )
        .unwrap();
        let s = dts(&dtb);
        assert!(
            s.contains("serial-number = \"6d1c7e0a-3b1f-4c2e-9a55-0123456789ab\";"),
            "{s}"
        );
        assert!(
            s.contains("ferrovisor,agent-console = \"/soc/virtio_mmio@10002000\";"),
            "{s}"
        );
    }
}
