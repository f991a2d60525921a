//! Every integration test, in one binary: one link instead of one per file, each of which was
//! a debug binary of 80-190 MB with its own copy of the generic code of kube, the AWS SDK and
//! serde. nextest still runs each test in its own process. A file here is a suite: `cargo
//! nextest run --test integration agent_dir::` runs one.

mod agent_support;
mod support;

mod agent_auth;
mod agent_crash;
mod agent_dir;
mod agent_jobs;
mod agent_postgres;
mod agent_rabbitmq;
mod agent_sse;
mod agent_stall;
mod agent_web_identity;
mod apiserver_api;
mod apiserver_controller;
mod apiserver_kubectl;
mod apiserver_scale;
mod backup_replicate;
mod backup_resources;
mod backuppolicy_crd;
mod certificate_crd;
mod cli;
mod crds;
mod gitops_health;
mod helm_install;
mod import_cluster;
mod import_compose;
mod kstatus;
mod kubectl_operator;
mod kubelet_standin;
mod kustomize_install;
mod leader_election;
mod manifests;
mod operator_app_shapes;
mod operator_appenvironment;
mod operator_aws;
mod operator_backup;
mod operator_backup_sse;
mod operator_databaseinstance;
mod operator_drill;
mod operator_faults;
mod operator_findings;
mod operator_hardening;
mod operator_irsa;
mod operator_tenancy;
mod provision_postgres;
mod provision_rabbitmq;
mod render;
mod version;
