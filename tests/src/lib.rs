//! Support code for metahook's end-to-end tests and the `bench` program.

pub mod bench;
pub mod chart;
pub mod cluster;
pub mod downstream;
pub mod fake_graph;
pub mod kubelet;
pub mod pki;
pub mod podman;
pub mod promql;
pub mod tansu;
pub mod testkit;
pub mod tls_front;
pub mod tools;
