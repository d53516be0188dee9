//! The whole sandbox in one process (written next).

/// Placeholder.
#[derive(Debug)]
pub struct Sandbox;
/// Placeholder.
#[derive(Debug)]
pub struct SandboxConfig;
