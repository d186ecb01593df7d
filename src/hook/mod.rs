//! The redeployment hook: HTTP routes, authentication, one payload parser per
//! Git host, and responses.

pub mod event;
pub mod providers;
pub mod signature;
