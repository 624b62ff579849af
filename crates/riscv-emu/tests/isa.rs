//! Instruction-level tests: each tests/asm/<name>.S program checks its own
//! results and exits through HTIF with 0 or the number of the failing check.

mod common;
use common::pass;

#[test]
fn rv64i() {
    pass("rv64i", 1);
}
