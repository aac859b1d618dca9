//! `paperclip-test-support`: what the tests (and the dev tools) use to drive the host: a
//! JSON-RPC client for a worker process ([`client`]), the worker flags, driver config and params
//! for a run against the exe.dev simulator ([`harness`]), and the components the tests load
//! ([`components`]: the product component and the misbehaving fixture).

pub mod client;
pub mod components;
pub mod harness;
