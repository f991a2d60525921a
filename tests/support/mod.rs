//! Test harness shared by the integration tests: a real Kubernetes control plane on loopback
//! (`cluster`, with the `kubelet` stand-in), the API server stand-in for fault injection, and
//! launchers for real PostgreSQL, RabbitMQ and S3-compatible servers on loopback.
#![allow(dead_code)]

pub mod apiserver;
pub mod cluster;
pub mod external_secrets;
pub mod fault_proxy;
pub mod install;
pub mod jobs;
pub mod kubectl;
pub mod kubelet;
pub mod objects;
pub mod operator;
pub mod s3_recorder;
pub mod servers;
pub mod stall_proxy;
pub mod sts;
pub mod wait;
