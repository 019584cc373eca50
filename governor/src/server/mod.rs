//! The gRPC shell over the ledger: request fields in, decisions out. No
//! admission logic lives here.
//!
//! - [`GovernorService`]: the data plane (`governor.v1.Governor`).
//! - [`AdminService`]: the control plane (`governor.v1.GovernorAdmin`).
//! - `errors`: the one mapping from ledger errors to gRPC statuses.

mod admin;
mod auth;
mod deadline;
mod delivery;
mod errors;
mod fields;
mod framing;
mod governor;
mod session;

use std::sync::Arc;

use rate_governor_proto::v1::governor_admin_server::GovernorAdminServer;
use rate_governor_proto::v1::governor_server::GovernorServer;
use tonic::service::Routes;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

pub use admin::AdminService;
pub(crate) use auth::RateLimitedLog;
pub use auth::{AdminAccess, AdminGate, TokenSlot, peer_of};
pub use delivery::Undelivered;
pub use framing::FramingLayer;
pub use governor::GovernorService;

use crate::config::ServerConfig;
use crate::ledger::Ledger;
use crate::telemetry::Telemetry;

/// The fully-qualified name health checks use for the data plane.
pub const GOVERNOR_SERVICE_NAME: &str = "governor.v1.Governor";

/// Every gRPC service the sidecar serves, ready to be mounted on a listener:
/// the data plane, the control plane, health, and reflection (v1 and v1alpha).
pub fn routes(
    ledger: Arc<Ledger>,
    telemetry: Arc<Telemetry>,
    health: HealthServer<impl Health>,
    config: &ServerConfig,
    control_plane: AdminAccess,
) -> Routes {
    let max = config.max_message_bytes;
    let governor = tower::Layer::layer(
        &delivery::DeliveryLayer,
        GovernorServer::new(GovernorService::new(ledger.clone(), telemetry))
            .max_decoding_message_size(max),
    );
    let admin = GovernorAdminServer::new(AdminService::new(ledger)).max_decoding_message_size(max);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rate_governor_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("the embedded descriptors are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptors are valid");
    let mut routes = Routes::builder();
    routes.add_service(governor);
    match control_plane {
        AdminAccess::Absent => {}
        AdminAccess::Open => {
            routes.add_service(admin);
        }
        AdminAccess::Token(gate) => {
            routes.add_service(tonic::service::interceptor::InterceptedService::new(
                admin, gate,
            ));
        }
    }
    routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    routes.routes()
}

/// The routes of the health-only listener: `grpc.health.v1.Health` and
/// nothing else (every other call is UNIMPLEMENTED).
pub fn health_routes(health: HealthServer<impl Health>) -> Routes {
    let mut routes = Routes::builder();
    routes.add_service(health);
    routes.routes()
}

/// Marks the sidecar serving ("" and `governor.v1.Governor`).
pub async fn set_serving(reporter: &HealthReporter, serving: bool) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let status = if serving { Serving } else { NotServing };
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(GOVERNOR_SERVICE_NAME, status)
        .await;
}
