//! Permits around calls to a dependency named "payments".
//!
//! Start a sidecar (`cargo run -p rate-governor`), then
//! `cargo run -p rate-governor-client --example basic`
//! (`GOVERNOR_ENDPOINT` overrides `http://127.0.0.1:50051`; a
//! `unix:///path.sock` endpoint works too).

use std::time::Duration;

use rate_governor_client::{AcquireError, Governor, Outcome, RetryPolicy};

/// Stands in for a real downstream call.
async fn charge(amount: u32) -> Result<String, std::io::Error> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(format!("charged {amount}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint =
        std::env::var("GOVERNOR_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let gov = Governor::connect(endpoint)?;

    // Scoped: released with SUCCESS or FAILURE and the measured latency.
    let receipt = gov.run("payments", charge(42)).await?;
    println!("run: {receipt}");

    // Explicit: inspect a rejection, release with an outcome of our choosing.
    match gov
        .acquire("payments")
        .max_wait(Duration::from_millis(100))
        .await
    {
        Ok(permit) => {
            let outcome = match charge(7).await {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            };
            println!(
                "acquire: degraded={} queue_wait={:?}",
                permit.is_degraded(),
                permit.queue_wait()
            );
            permit.release(outcome).await?;
        }
        Err(AcquireError::Rejected(rejection)) => {
            println!(
                "acquire: rejected ({rejection}); back off for {:?}",
                rejection.retry_after
            );
        }
        Err(other) => return Err(other.into()),
    }

    // Retries that draw on the sidecar's retry budget.
    let receipt = gov
        .retry("payments", RetryPolicy::default(), || charge(99))
        .await?;
    println!("retry: {receipt}");
    println!("stats: {:?}", gov.stats());
    Ok(())
}
