//! Spike's HTIF: a store to `tohost` is a command. `(dev 0, cmd 0)` with
//! payload bit 0 set exits with code `payload >> 1`; `(dev 1, cmd 1)` writes a
//! console byte and is acknowledged through `fromhost` as Spike does.

use crate::hart::Hart;
use crate::ExitReason;

impl Hart {
    /// Called after a RAM store to a page holding `tohost`/`fromhost`.
    pub fn htif_store(&mut self, pa: u64) {
        let Some(cfg) = self.sh.htif.clone() else {
            return;
        };
        if pa & !7 != cfg.tohost & !7 {
            return;
        }
        let Some(v) = self.phys_read64(cfg.tohost) else {
            return;
        };
        if v == 0 {
            return;
        }
        let dev = v >> 56;
        let cmd = (v >> 48) & 0xff;
        let payload = v & ((1 << 48) - 1);
        match (dev, cmd) {
            (0, 0) if payload & 1 == 1 => {
                let code = payload >> 1;
                let reason = if code == 0 {
                    ExitReason::Poweroff
                } else {
                    ExitReason::ExitCode(code.min(u32::MAX as u64) as u32)
                };
                self.sh.request_exit(reason);
            }
            (1, 1) => {
                if let Some(out) = self
                    .sh
                    .htif_console
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                {
                    out(payload as u8);
                }
                self.phys_write64(cfg.tohost, 0);
                if let Some(fh) = cfg.fromhost {
                    self.phys_write64(fh, (1 << 56) | (1 << 48));
                }
            }
            _ => {
                // Unsupported (e.g. the syscall proxy): consume the command.
                self.phys_write64(cfg.tohost, 0);
            }
        }
    }
}
