//! Embedded backend (to be implemented).
