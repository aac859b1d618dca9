//! One module per capability the host grants the component.

pub mod http;
pub mod ledger;
pub mod log;
mod process_group;
pub mod session;
pub mod ssh;
pub mod ssh_durable;
mod ssh_mux;
mod ssh_output;
mod ssh_serve;
pub mod transfer;
