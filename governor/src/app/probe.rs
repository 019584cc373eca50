//! `governor probe`: a gRPC health check for container runtimes that cannot
//! speak gRPC themselves.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Exit 0 if `service` at `addr` is SERVING, 1 otherwise.
pub async fn probe(addr: SocketAddr, service: String, timeout: Duration) -> ExitCode {
    let check = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .map_err(|status| status.message().to_owned())?;
        Ok::<_, String>(response.into_inner().status())
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            eprintln!("governor probe: {addr}: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("governor probe: {addr}: no answer within {timeout:?}");
            ExitCode::FAILURE
        }
    }
}
