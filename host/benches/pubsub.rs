//! Pub/Sub benchmark (written with the subscriber).
fn main() {}
