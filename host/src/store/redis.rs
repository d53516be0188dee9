//! Redis backend (to be implemented).
