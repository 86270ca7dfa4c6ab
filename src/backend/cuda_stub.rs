//! The CUDA backend's API in a build without nvcc: every constructor returns
//! `Error::CudaNotCompiled`, so callers compile and fail with a clear message at run time.
//! The types are uninhabited: no value of them can exist.

use std::convert::Infallible;

use crate::error::{Error, Result};
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
