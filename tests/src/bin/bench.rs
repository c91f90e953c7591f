//! Benchmark of metahook-receiver against a minimal baseline server; see
//! [`metahook_tests::bench`] for what is measured and why.
//!
//! `cargo run --release -p metahook-tests --bin bench [-- --duration 10s --connections 64]`

use clap::Parser;
use metahook_tests::bench::{self, Args};

fn main() -> anyhow::Result<()> {
    bench::main(Args::parse())
}
