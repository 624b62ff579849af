//! Writes the riscv64 machine's device tree for inspection or for booting
//! under QEMU (`qemu-system-riscv64 -M virt -dtb out.dtb`):
//! `cargo run -p arch --example dumpdtb -- OUT HARTS MEM_MIB [CMDLINE]`.

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        eprintln!("usage: dumpdtb OUT HARTS MEM_MIB [CMDLINE]");
        std::process::exit(2);
    }
    let harts: usize = a[2].parse().expect("HARTS");
    let mem: u64 = a[3].parse::<u64>().expect("MEM_MIB") << 20;
    let cmdline = a.get(4).map(String::as_str).unwrap_or("console=ttyS0");
    let dtb = arch::riscv64::dtb_for(harts, mem, cmdline, None, &[]).expect("dtb");
    std::fs::write(&a[1], dtb).expect("write");
}
