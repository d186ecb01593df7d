//! redeploy-operator: a secret redeployment hook for every application, and
//! the reconcilers that turn each accepted call into tracked rollouts.

pub mod allocator;
pub mod api;
pub mod build;
pub mod cache;
pub mod cli;
pub mod context;
pub mod git;
pub mod github;
pub mod hook;
pub mod http;
pub mod image;
pub mod install;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod plan;
pub mod plugin;
pub mod reconcile;
pub mod registry;
pub mod repo;
pub mod server;
pub mod text;
pub mod workload;
