//! Models: configuration read from files, the tensor table of each architecture, and (from the
//! CPU-engine issue on) weights and one forward() per architecture.

pub mod config;
pub mod qwen3moe;
pub mod weights;

pub use config::{Arch, ModelConfig, TensorDesc, TensorRole};
