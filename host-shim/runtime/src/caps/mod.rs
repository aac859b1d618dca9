//! One module per capability the host grants the component.

pub mod http;
pub mod ledger;
pub mod log;
pub mod ssh;
mod ssh_mux;
pub mod transfer;
