//! Hostile-input readers for the model file formats: GGUF (llama.cpp) and safetensors + the HF
//! directory around it. Every count is checked against the bytes left before anything is
//! allocated from it; every failure is an `Error` naming the key, tensor or offset.

pub mod gguf;
pub mod hf;
pub mod safetensors;

use std::path::Path;

use crate::error::{Error, Result};

/// The bytes of a model file: a read-only mapping of the file, or an owned image (tests,
/// fuzzing, the embedded default model). Readers validate these bytes before handing out views.
pub enum FileBytes {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl FileBytes {
    pub fn map(path: &Path) -> Result<FileBytes> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: a file-backed mapping is only sound while nobody modifies or truncates the
        // file: a concurrent writer would change bytes behind our `&[u8]` (undefined behaviour)
        // or raise SIGBUS. Model files are mapped read-only and treated as immutable for the
        // life of the process (as llama.cpp and the safetensors crate do); the README states
        // this assumption. Every reader validates the bytes before handing out a view, and
        // views borrow from this value, so they never outlive the mapping.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(FileBytes::Mmap(mmap))
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            FileBytes::Mmap(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}

/// Read a whole (small) file, refusing one larger than `bytes_max`: checked before reading,
/// and the read itself is capped in case the file grows meanwhile.
pub fn read_capped(path: &Path, bytes_max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let too_large = |count: u64| {
        let what = "file size in bytes".to_string();
        Error::CountTooLarge { what, offset: 0, count, max: bytes_max }.in_file(path)
    };
    let file_bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_bytes > bytes_max {
        return Err(too_large(file_bytes));
    }
    let mut bytes = Vec::with_capacity(file_bytes as usize);
    file.take(bytes_max + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > bytes_max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}
