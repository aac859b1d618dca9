//! Per-call resource limits of a store. The memory cap is the one an operator tunes
//! (`--max-memory-mb`), so passing it raises a typed error that says so, instead of wasmtime's
//! generic growth failure under a wasm backtrace.

use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// The component tried to grow its linear memory past the per-call cap.
#[derive(Debug, thiserror::Error)]
#[error(
    "it needed {desired_mib} MiB of memory, past its limit of {limit_mib} MiB (raise \
     --max-memory-mb)"
)]
pub struct MemoryLimitExceeded {
    /// The size the memory would have grown to, in MiB (rounded up).
    pub desired_mib: usize,
    /// The cap, in MiB.
    pub limit_mib: usize,
}

/// The store limiter of one call: wasmtime's [`StoreLimits`] for instance, table and memory
/// counts, plus the memory cap as a [`MemoryLimitExceeded`] trap.
pub struct CallLimits {
    inner: StoreLimits,
    max_memory_bytes: usize,
}

impl CallLimits {
    /// Limits for one call with a linear-memory cap of `max_memory_bytes`.
    pub fn new(max_memory_bytes: usize) -> Self {
        CallLimits {
            inner: StoreLimitsBuilder::new()
                .memory_size(max_memory_bytes)
                .instances(16)
                .tables(64)
                .memories(4)
                .trap_on_grow_failure(true)
                .build(),
            max_memory_bytes,
        }
    }
}

impl ResourceLimiter for CallLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            return Err(MemoryLimitExceeded {
                desired_mib: desired.div_ceil(1 << 20),
                limit_mib: self.max_memory_bytes >> 20,
            }
            .into());
        }
        self.inner.memory_growing(current, desired, maximum)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_past_the_cap_is_a_typed_error() {
        let mut limits = CallLimits::new(64 << 20);
        assert!(limits.memory_growing(0, 32 << 20, None).unwrap());
        let err = limits
            .memory_growing(32 << 20, (64 << 20) + 1, None)
            .unwrap_err();
        let typed = err.downcast_ref::<MemoryLimitExceeded>().expect("typed");
        assert_eq!((typed.desired_mib, typed.limit_mib), (65, 64));
        assert_eq!(
            err.to_string(),
            "it needed 65 MiB of memory, past its limit of 64 MiB (raise --max-memory-mb)"
        );
    }
}
