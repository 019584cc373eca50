//! Governs every call of a tower service (here a stand-in for an HTTP
//! client) as dependency "search".
//!
//! Start a sidecar (`cargo run -p rate-governor`), then
//! `cargo run -p rate-governor-client --example tower_layer`.

use std::time::Duration;

use rate_governor_client::{GovernedError, Governor, GovernorLayer, Priority};
use tower::{Service as _, ServiceBuilder, ServiceExt as _};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint =
        std::env::var("GOVERNOR_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let gov = Governor::connect(endpoint)?;

    // Any `Service + Clone` works: a tonic `Channel`, a hyper client, ...
    let search = tower::service_fn(|query: String| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if query.is_empty() {
            Err(std::io::Error::other("empty query"))
        } else {
            Ok(format!("results for {query:?}"))
        }
    });
    let mut service = ServiceBuilder::new()
        .layer(GovernorLayer::new(gov, "search").priority(Priority::Critical))
        .service(search);

    for query in ["rust", ""] {
        match service.ready().await?.call(query.to_owned()).await {
            Ok(results) => println!("{results}"),
            Err(GovernedError::Acquire(no_permit)) => println!("not sent: {no_permit}"),
            Err(GovernedError::Inner(failed)) => println!("sent, failed: {failed}"),
        }
    }
    Ok(())
}
