use rate_governor::ledger::{AcquireRequest, Ledger, LedgerConfig, Priority, Report};
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |s| s.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ledger = Ledger::new(LedgerConfig::default());
        let request = AcquireRequest {
            dependency: "payments",
            attempt: 0,
            priority: Priority::Normal,
            max_wait: None,
        };
        let t = std::time::Instant::now();
        for _ in 0..n {
            let d = ledger.acquire(&request).await.unwrap();
            let lease = d.granted().unwrap().lease;
            ledger.release(&lease, Report::default()).unwrap();
        }
        eprintln!("{:?} per pair", t.elapsed() / n as u32);
    });
}
