//! Cairn's load generator as a library: the workloads (`workload`), the closed-loop driver
//! and its measurements (`driver`, `report`, `cpu`) and the side-by-side comparison with
//! real etcd (`compare`). The `cairn-bench` binary is its command line.

pub mod compare;
pub mod cpu;
pub mod driver;
pub mod report;
pub mod workload;
