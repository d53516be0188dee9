//! The CPU deadline's clock: the CPU time of the threads running the component's own code.
//!
//! wasmtime calls the store's call hook on every crossing between the guest and the host
//! (entering and leaving the guest, every import and libcall, the epoch check included). The
//! clock reads the running thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`) at each crossing and
//! adds up the stretches spent in the guest. Time the thread is not scheduled (a loaded machine),
//! time in host calls and time waiting for them are not counted: a healthy job is not timed out
//! because the machine is busy. A guest that resumes on another thread after a host call or a
//! yield is measured from that crossing on that thread.

use std::time::Duration;

use rustix::time::{ClockId, clock_gettime};
use wasmtime::CallHook;

/// CPU time used by the guest of one job.
#[derive(Debug, Default)]
pub(crate) struct GuestCpu {
    used: Duration,
    /// The running thread's CPU clock when the guest last started running on it; `None` while
    /// the host has control.
    entered: Option<Duration>,
}

impl GuestCpu {
    /// Accounts for one crossing.
    pub(crate) fn cross(&mut self, hook: CallHook) {
        if hook.exiting_host() {
            self.entered = Some(thread_cpu());
        } else if let Some(entered) = self.entered.take() {
            self.used += thread_cpu().saturating_sub(entered);
        }
    }

    /// CPU time the guest has used so far (up to its last crossing into the host).
    pub(crate) fn used(&self) -> Duration {
        self.used
    }
}

/// The calling thread's CPU clock.
fn thread_cpu() -> Duration {
    let t = clock_gettime(ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let start = thread_cpu();
        while thread_cpu() - start < d {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn only_the_stretches_in_the_guest_count() {
        let mut cpu = GuestCpu::default();
        cpu.cross(CallHook::CallingWasm);
        spin(Duration::from_millis(20));
        cpu.cross(CallHook::CallingHost);
        let in_guest = cpu.used();
        assert!(in_guest >= Duration::from_millis(20), "{in_guest:?}");
        // Host work and sleeping are not the guest's.
        spin(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(20));
        cpu.cross(CallHook::ReturningFromHost);
        cpu.cross(CallHook::ReturningFromWasm);
        let after = cpu.used();
        assert!(after - in_guest < Duration::from_millis(10), "{after:?}");
        // A second leave without an enter adds nothing.
        cpu.cross(CallHook::CallingHost);
        assert_eq!(cpu.used(), after);
    }
}
