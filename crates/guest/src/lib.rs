//! The default guest, built from Debian's own riscv64 packages: apt fetches
//! them with a temporary sources list (mirror taken from the host's apt
//! configuration), and we build the initramfs and disk images, cached under
//! `$XDG_CACHE_HOME/ferro`.

/// `ferro guest …` arguments.
#[derive(clap::Args, Debug)]
pub struct GuestArgs {}

pub fn main(_args: GuestArgs) -> anyhow::Result<i32> {
    todo!()
}
