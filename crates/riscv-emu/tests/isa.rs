//! Instruction-level tests: each tests/asm/<name>.S program checks its own
//! results and exits through HTIF with 0 or the number of the failing check.

mod common;
use common::pass;

#[test]
fn rv64i() {
    pass("rv64i", 1);
}

#[test]
fn rv64m() {
    pass("rv64m", 1);
}

#[test]
fn rv64a() {
    pass("rv64a", 1);
}

#[test]
fn rvc() {
    pass("rvc", 1);
}

#[test]
fn zicsr_and_counters() {
    pass("csr", 1);
}

#[test]
fn privileged_traps_and_delegation() {
    pass("priv", 1);
}

#[test]
fn sv39_sv48_translation() {
    pass("vm", 1);
}

#[test]
fn timers_wfi_and_ipi() {
    let o = pass("timer", 1);
    // WFI sleeps rather than spinning: the two 2 ms waits retire few instructions.
    assert!(o.instret < 200_000, "WFI spun: {} instructions", o.instret);
}

/// Four harts on four host threads: AMO and LR/SC increments give the exact
/// total, then hart 0 wakes the others from WFI with msip IPIs.
#[test]
fn multihart_atomics_and_ipi() {
    let o = pass("multihart", 4);
    assert!(
        o.instret > 4 * 2 * 200_000 * 4,
        "harts retired only {}",
        o.instret
    );
}

#[test]
fn fd_rounding_flags_nan_boxing() {
    pass("fpu", 1);
}

#[test]
fn zifencei_self_modifying_code() {
    pass("smc", 1);
}

/// External interrupt lines as the PLIC drives them (IrqHandle), mip/sip views
/// and the rule that CSR read-modify-writes of mip see only the software SEIP.
#[test]
fn external_interrupt_lines() {
    pass("extirq", 1);
}

/// SC fails when another hart stored to the reserved word after the LR.
#[test]
fn sc_fails_after_remote_store() {
    pass("lrsc2", 2);
}

/// PMP enforcement: NAPOT/TOR/NA4, S/U default-deny, locked entries for M,
/// access-fault causes, sub-page rules, TLB flush on writes, MPRV, walks.
#[test]
fn pmp_enforcement() {
    pass("pmp", 1);
}

/// SC fails after another hart's store to the reserved granule even when it
/// wrote the value LR read (ABA), and a store elsewhere on the page leaves
/// the reservation alone.
#[test]
fn sc_fails_after_remote_store_of_the_same_value() {
    pass("lrsc3", 2);
}
