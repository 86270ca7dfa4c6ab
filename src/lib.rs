//! Rotary: a kernel-first inference engine for Mixture-of-Experts LLMs on GPUs smaller than the
//! model. Data flows one way: file → weights → plan → forward → kernels → tokens.
//!
//! This crate is the library; `src/main.rs` is the CLI (clap + indicatif only).

pub mod backend;
pub mod bench;
pub mod chat;
pub mod error;
pub mod format;
pub mod forward;
pub mod inspect;
pub mod kernels;
pub mod limits;
pub mod model;
pub mod ops;
pub mod quant;
pub mod rotary;
pub mod routing;
pub mod run;
pub mod sample;
pub mod selftest;
pub mod serve;
pub mod synth;
pub mod tokenizer;
pub mod units;

pub use error::{Error, Result};
pub use forward::{Engine, Logits, Session};
