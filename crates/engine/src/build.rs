//! `ferro container build` (filled in below).
use crate::paths::Engine;
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Name (and tag) of the result.
    #[arg(short = 't', long = "tag")]
    pub tags: Vec<String>,
    /// Dockerfile (default CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// ARG values: NAME=VALUE.
    #[arg(long = "build-arg")]
    pub build_args: Vec<String>,
    /// Build up to this stage.
    #[arg(long)]
    pub target: Option<String>,
    /// Do not use the build cache.
    #[arg(long = "no-cache")]
    pub no_cache: bool,
    pub context: PathBuf,
}

pub fn main(_eng: &Engine, _a: &BuildArgs) -> Result<i32> {
    bail!("build is not implemented yet")
}
