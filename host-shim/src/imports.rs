//! The component's own imports (`ssh`, `log`), implemented on the store data. Each is a thin
//! forward to its capability module; policy lives there, not here.

use crate::bindings::{log, ssh, types};
use crate::caps::log::Level;
use crate::state::HostState;

impl types::Host for HostState {}

impl ssh::Host for HostState {
    async fn exec(&mut self, request: ssh::ExecRequest) -> Result<ssh::ExecOutput, ssh::SshError> {
        self.ssh.exec(request, self.sink.clone()).await
    }

    async fn connect(
        &mut self,
        target: ssh::Target,
        timeout_ms: u32,
    ) -> Result<ssh::ConnectOutcome, ssh::SshError> {
        self.ssh.connect(target, timeout_ms).await
    }

    async fn disconnect(&mut self, target: ssh::Target) {
        self.ssh.disconnect(target).await
    }
}

impl log::Host for HostState {
    async fn emit(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            log::Level::Trace => Level::Trace,
            log::Level::Debug => Level::Debug,
            log::Level::Info => Level::Info,
            log::Level::Warn => Level::Warn,
            log::Level::Error => Level::Error,
        };
        self.sink.log(level, &message, &fields);
    }
}
