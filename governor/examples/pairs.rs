//! Uncontended acquire + release pairs on the in-process ledger, for an
//! instruction count that does not depend on what else the machine runs:
//!
//! ```sh
//! cargo build --release -p rate-governor --example pairs
//! valgrind --tool=callgrind target/release/examples/pairs 20000
//! valgrind --tool=callgrind target/release/examples/pairs 40000
//! ```
//!
//! The difference of the two totals over 20000 is the cost of one pair.
//! Criterion (`cargo bench -p rate-governor`) measures time.

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
            tenant: None,
            route: None,
            attempt: 0,
            priority: Priority::Normal,
            max_wait: None,
            degradable: false,
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
