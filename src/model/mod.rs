//! Models: configuration read from files and the tensor table of each architecture, and the
//! weights as the forward pass (src/forward/) reads them.

pub mod config;
pub mod weights;

pub use config::{Arch, ModelConfig, TensorDesc, TensorRole};
