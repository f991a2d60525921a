//! Test harness shared by the integration tests: a Kubernetes API server stand-in and
//! launchers for real PostgreSQL, RabbitMQ and S3-compatible servers on loopback.
#![allow(dead_code)]

pub mod apiserver;
pub mod jobs;
pub mod kubectl;
pub mod operator;
pub mod servers;
pub mod wait;
