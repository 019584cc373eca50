//! The heap as jemalloc (the binary's global allocator) sees it: bytes the
//! program holds, and bytes of memory the allocator keeps resident for
//! them. The gap is what a burst leaves behind until the allocator's
//! background thread purges it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// Turns on jemalloc's background purging thread, which returns freed
/// pages to the system on its decay schedule (`dirty_decay_ms`, 10 s by
/// default) instead of on the next allocation of the thread that freed
/// them; a sidecar idle after a burst would otherwise keep them. A failure
/// (a binary built with another allocator) is logged and changes nothing.
pub fn start_purging() {
    if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::debug!(%error, "jemalloc background thread not started");
    }
}

/// One reading: (allocated, resident) bytes, if jemalloc answers.
pub fn reading() -> Option<(u64, u64)> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    let allocated = tikv_jemalloc_ctl::stats::allocated::read().ok()?;
    let resident = tikv_jemalloc_ctl::stats::resident::read().ok()?;
    Some((allocated as u64, resident as u64))
}

/// Writes `governor_heap_allocated_bytes` and `governor_heap_resident_bytes`
/// on every scrape; nothing when the allocator is not jemalloc.
#[derive(Debug, Default)]
pub struct HeapCollector;

impl Collector for HeapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some((allocated, resident)) = reading() else {
            return Ok(());
        };
        // jemalloc in a binary without it as the global allocator reports
        // only its own bookkeeping: leave the metrics out then too.
        if allocated == 0 {
            return Ok(());
        }
        let gauges = [
            (
                "governor_heap_allocated_bytes",
                "Heap bytes allocated by the sidecar (jemalloc stats.allocated)",
                allocated,
            ),
            (
                "governor_heap_resident_bytes",
                "Bytes of memory the allocator keeps resident (jemalloc stats.resident)",
                resident,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}
