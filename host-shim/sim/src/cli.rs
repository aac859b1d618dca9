//! Command-line flags of the simulator that other binaries share (`paperclip-dev demo` puts the
//! same link model in front of its simulator).

use clap::Args;

use crate::LinkModel;

/// The simulator's link model: added round trip and bandwidth cap on its SSH path (both 0:
/// plain loopback).
#[derive(Args, Clone, Copy)]
pub struct LinkArgs {
    /// Round-trip time added to the simulator's SSH path, in milliseconds.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub link_rtt_ms: u64,
    /// Bandwidth cap of the simulator's SSH path, in Mbit/s (0: uncapped).
    #[arg(long, default_value_t = 0, value_name = "MBIT")]
    pub link_mbit: u64,
}

impl LinkArgs {
    /// The link model these flags ask for; `None` for plain loopback.
    pub fn model(self) -> Option<LinkModel> {
        (self.link_rtt_ms > 0 || self.link_mbit > 0)
            .then(|| LinkModel::new(self.link_rtt_ms, self.link_mbit))
    }
}
