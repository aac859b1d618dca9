//! `paperclip-wasm-host`: the command-line entry point (see [`paperclip_wasm_host::cli`]).

fn main() -> std::process::ExitCode {
    paperclip_wasm_host::cli::main()
}
