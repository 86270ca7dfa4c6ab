//! Hostile-input readers for the model file formats: GGUF (llama.cpp) and safetensors + the HF
//! directory around it. Every count is checked against the bytes left before anything is
//! allocated from it; every failure is an `Error` naming the key, tensor or offset.

pub mod gguf;
pub mod hf;
pub mod safetensors;
