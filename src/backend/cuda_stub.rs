//! The CUDA backend's API in a build without nvcc: every constructor returns
//! `Error::CudaNotCompiled`, so callers compile and fail with a clear message at run time.
//! The types are uninhabited: no value of them can exist.

use std::convert::Infallible;

use crate::error::{Error, Result};
use crate::model::qwen3moe::Logits;
use crate::model::weights::Weights;
use crate::model::Engine;
use crate::selftest::{Inputs, Op, OpsBackend, Output};

/// Whether this build has CUDA kernels.
pub const COMPILED: bool = false;

pub struct CudaOps {
    never: Infallible,
}

impl CudaOps {
    pub fn open(_ordinal: usize) -> Result<CudaOps> {
        Err(Error::CudaNotCompiled)
    }
}

impl OpsBackend for CudaOps {
    fn name(&self) -> &'static str {
        match self.never {}
    }
    fn device(&self) -> String {
        match self.never {}
    }
    fn run(&mut self, _: &Op, _: &Inputs) -> Result<Option<Output>> {
        match self.never {}
    }
    fn time(&mut self, _: &Op, _: &Inputs) -> Result<Option<f64>> {
        match self.never {}
    }
    fn copy_gbps(&mut self) -> Result<Option<f64>> {
        match self.never {}
    }
}

pub struct GpuSession {
    never: Infallible,
    pub device_bytes: u64,
}

impl GpuSession {
    pub fn new(
        _w: &Weights,
        _n_ctx: usize,
        _ordinal: usize,
        _progress: &mut dyn FnMut(u64, u64),
    ) -> Result<GpuSession> {
        Err(Error::CudaNotCompiled)
    }

    pub fn device(&self) -> String {
        match self.never {}
    }
}

impl Engine for GpuSession {
    fn forward(&mut self, _: &[u32], _: Logits) -> Result<Vec<f32>> {
        match self.never {}
    }
    fn n_past(&self) -> usize {
        match self.never {}
    }
    fn n_ctx(&self) -> usize {
        match self.never {}
    }
    fn reset(&mut self) {
        match self.never {}
    }
    fn backend_name(&self) -> &'static str {
        match self.never {}
    }
    fn threads(&self) -> usize {
        match self.never {}
    }
}
