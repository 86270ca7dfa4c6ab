//! Models: configuration read from files, the tensor table of each architecture, and (from the
//! CPU-engine issue on) weights and one forward() per architecture.

pub mod config;
pub mod deltanet;
pub mod qwen35moe;
pub mod qwen3moe;
pub mod weights;

pub use config::{Arch, ModelConfig, TensorDesc, TensorRole};

/// A model in use with the state of one sequence: what generation and benchmarks drive. The
/// CPU `Session` (any host backend) and the GPU-resident `GpuSession` implement it.
pub trait Engine {
    /// Run `tokens` at positions n_past.. and return logits (`[n_vocab]` for the last token,
    /// or `[tokens.len(), n_vocab]`).
    fn forward(&mut self, tokens: &[u32], which: qwen3moe::Logits) -> crate::Result<Vec<f32>>;
    /// Tokens in the cache (the position of the next token).
    fn n_past(&self) -> usize;
    fn n_ctx(&self) -> usize;
    /// Forget the sequence.
    fn reset(&mut self);
    /// Keep only the first `n_past` tokens of the sequence (a prompt cache whose new prompt
    /// shares only a prefix). False when the model cannot (a recurrent state has no history);
    /// then nothing changed.
    fn rewind(&mut self, _n_past: usize) -> bool {
        false
    }
    fn backend_name(&self) -> &'static str;
    fn threads(&self) -> usize;
    /// Route experts by a benchmark mode and/or record the routing (see src/routing.rs).
    fn set_router(&mut self, router: crate::routing::Router);
    /// The rotary's measurements (device backends: sim, cuda); None for host backends.
    fn rotary_stats(&self) -> Option<crate::rotary::Stats> {
        None
    }
}
