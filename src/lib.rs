//! redeploy-operator: a secret redeployment hook for every application, and
//! the reconcilers that turn each accepted call into tracked rollouts.

pub mod api;
pub mod cli;
pub mod hook;
pub mod install;
pub mod plan;
pub mod repo;
pub mod metrics;
pub mod context;
pub mod reconcile;
pub mod server;
pub mod operator;
