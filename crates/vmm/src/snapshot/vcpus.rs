//! The meeting point where a snapshot collects vCPU state: each vCPU's registers can only be
//! read on its own thread (Hypervisor.framework requires it; KVM is simply tidier so), so the
//! snapshot asks every parked vCPU thread and waits for their answers.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use devices::lock;

use super::{SnapshotError, VcpuSnapshot};
use crate::state::VmState;

/// One round of saves: `results[id]` is `None` until vCPU `id` answered.
#[derive(Default)]
struct Round {
    active: bool,
    results: Vec<Option<crate::Result<VcpuSnapshot>>>,
}

#[derive(Default)]
pub(crate) struct VcpuSaves {
    round: Mutex<Round>,
    answered: Condvar,
}

impl VcpuSaves {
    /// Whether vCPU `id` has been asked for its state and not answered yet.
    pub(crate) fn wanted(&self, id: u32) -> bool {
        let r = lock(&self.round);
        r.active && matches!(r.results.get(id as usize), Some(None))
    }

    /// vCPU `id`'s answer.
    pub(crate) fn answer(&self, id: u32, result: crate::Result<VcpuSnapshot>) {
        let mut r = lock(&self.round);
        if let Some(slot) = r.results.get_mut(id as usize) {
            *slot = Some(result);
        }
        self.answered.notify_all();
    }

    /// Asks the `cpus` parked vCPU threads of `state` for their state and waits (at most
    /// `timeout`) for every answer, in vCPU order.
    pub(crate) fn collect(
        &self,
        cpus: u32,
        state: &VmState,
        timeout: Duration,
    ) -> Result<Vec<VcpuSnapshot>, SnapshotError> {
        {
            let mut r = lock(&self.round);
            r.active = true;
            r.results = (0..cpus).map(|_| None).collect();
        }
        state.wake_parked();
        let deadline = Instant::now() + timeout;
        let mut r = lock(&self.round);
        while r.results.iter().any(Option::is_none) {
            let now = Instant::now();
            if state.stopping() || now >= deadline {
                break;
            }
            r = self
                .answered
                .wait_timeout(r, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        r.active = false;
        let results = std::mem::take(&mut r.results);
        drop(r);
        if state.stopping() {
            return Err(SnapshotError::Stopped);
        }
        results
            .into_iter()
            .enumerate()
            .map(|(id, res)| match res {
                Some(Ok(s)) => Ok(s),
                Some(Err(e)) => Err(SnapshotError::Vcpu {
                    id: id as u32,
                    source: Box::new(e),
                }),
                None => Err(SnapshotError::VcpuTimeout(id as u32)),
            })
            .collect()
    }
}
