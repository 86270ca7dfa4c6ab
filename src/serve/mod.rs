//! `rotary serve`: an OpenAI-compatible HTTP server in front of one engine.
//!
//! - `api`: the requests and responses as JSON, checked field by field.
//! - `text`: reasoning (`<think>`) and tool calls (`<tool_call>`) split out of the output.
//! - `worker`: the engine's thread, its queue and the prompt cache.
//! - `http`: routes, API key, limits, streaming, cancellation (axum on tokio).

pub mod api;
pub mod http;
pub mod text;
pub mod worker;
