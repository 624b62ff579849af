//! virtio-console (device 3), single port (hvc0): guest output goes to a host
//! writer, host input (any pollable fd: a pipe, a pty, a socket, stdin) goes
//! to the guest.

mod device;
mod worker;

pub use device::{Console, ConsoleIo};
