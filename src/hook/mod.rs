//! The redeployment hook: HTTP routes, authentication, one payload parser per
//! Git host, and responses.

pub mod credentials;
pub mod deliveries;
pub mod event;
pub mod handler;
pub mod index;
pub mod providers;
pub mod record;
pub mod routes;
pub mod signature;
pub mod signature_keys;
