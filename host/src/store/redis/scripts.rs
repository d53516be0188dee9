//! The Lua scripts, one `.lua` file each under `lua/` (its header says its KEYS, ARGV and reply).
//! Each touches only keys of one channel (one hash slot), or of one hold.

use redis::Script;

/// The scripts, by what uses them.
pub(super) struct Scripts {
    // Lease and ingest (`cursor_lease`).
    pub acquire: Script,
    pub renew: Script,
    pub release: Script,
    pub ingest: Script,
    // The queue (`queue`).
    pub reclaim: Script,
    pub touch: Script,
    pub finish: Script,
    pub dead_letter_job: Script,
    // Dead letters (`dead_letters`).
    pub requeue: Script,
    // Holds (`holds`).
    pub hold: Script,
    pub rehold: Script,
    pub unhold: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Scripts {
            acquire: Script::new(include_str!("lua/acquire.lua")),
            renew: Script::new(include_str!("lua/renew.lua")),
            release: Script::new(include_str!("lua/release.lua")),
            ingest: Script::new(include_str!("lua/ingest.lua")),
            reclaim: Script::new(include_str!("lua/reclaim.lua")),
            touch: Script::new(include_str!("lua/touch.lua")),
            finish: Script::new(include_str!("lua/finish.lua")),
            dead_letter_job: Script::new(include_str!("lua/dead_letter_job.lua")),
            requeue: Script::new(include_str!("lua/requeue.lua")),
            hold: Script::new(include_str!("lua/hold.lua")),
            rehold: Script::new(include_str!("lua/rehold.lua")),
            unhold: Script::new(include_str!("lua/unhold.lua")),
        }
    }
}
