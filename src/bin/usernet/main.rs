//! The `usernet` command line.
fn main() {}
