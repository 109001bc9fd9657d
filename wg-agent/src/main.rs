//! The wg-agent binary.

fn main() {}
