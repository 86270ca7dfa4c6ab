//! Hostile-input readers for the model file formats: GGUF (llama.cpp) and safetensors + the HF
//! directory around it. Every count is checked against the bytes left before anything is
//! allocated from it; every failure is an `Error` naming the key, tensor or offset.

pub mod gguf;
pub mod hf;
pub mod safetensors;

use std::path::Path;

use crate::error::{Error, Result};

/// The bytes of a model file: a read-only mapping of the file, a copy in anonymous memory
/// (`--no-mmap`), or an owned image (tests, fuzzing, the embedded default model). Readers
/// validate these bytes before handing out views.
pub enum FileBytes {
    Mmap(memmap2::Mmap),
    /// The file's bytes at `start` of an anonymous mapping (2 MiB-aligned there, for huge
    /// pages).
    Anon {
        map: memmap2::MmapMut,
        start: usize,
        len: usize,
    },
    Owned(Vec<u8>),
}

/// Transparent huge pages are 2 MiB on x86-64 (and the common arm64 configuration).
const HUGE_PAGE: usize = 2 << 20;

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
            FileBytes::Anon { map, start, len } => &map[*start..*start + *len],
            FileBytes::Owned(v) => v,
        }
    }

    /// Replace a file mapping by a copy of its bytes in anonymous memory, with transparent
    /// huge pages asked for (`madvise`; the kernel may give fewer, or none). Products that
    /// stream weights from host memory read them faster there: fewer TLB misses, and on this
    /// project's 2-core Xeon a Q4_K expert GEMV from cold memory went from 19 to 25 GB/s. The
    /// copy costs the file's size in RAM and a read of the whole file now; `progress(done,
    /// total)` follows it; a failed allocation names `path`. Nothing to do for the other kinds.
    pub fn load_to_memory(
        &mut self,
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let FileBytes::Mmap(file) = self else { return Ok(()) };
        let len = file.len();
        let oom = |e| Error::io(path, e);
        let mut map = memmap2::MmapOptions::new().len(len + HUGE_PAGE).map_anon().map_err(oom)?;
        #[cfg(target_os = "linux")]
        {
            // Advice only: a kernel without transparent huge pages leaves 4 KiB pages.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let start = map.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
        // Read with read(2), not through the mapping: the mapping's pages would count in this
        // process's resident memory next to the copy.
        let mut reader = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let now = reader.metadata().map_err(|e| Error::io(path, e))?.len();
        if now != len as u64 {
            let why = format!("the file changed size since it was opened ({len} -> {now} bytes)");
            return Err(Error::io(path, std::io::Error::other(why)));
        }
        const CHUNK: usize = 64 << 20;
        let mut done = 0;
        while done < len {
            let n = CHUNK.min(len - done);
            let dst = &mut map[start + done..start + done + n];
            std::io::Read::read_exact(&mut reader, dst).map_err(|e| Error::io(path, e))?;
            done += n;
            progress(done as u64, len as u64);
        }
        *self = FileBytes::Anon { map, start, len };
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_to_memory_keeps_every_byte() {
        let path = std::env::temp_dir().join(format!("rotary-anon-{}.bin", std::process::id()));
        // Longer than a huge page and not a multiple of the copy's pieces.
        let bytes: Vec<u8> = (0..(5 << 20) + 7).map(|i: u32| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut b = FileBytes::map(&path).unwrap();
        let mut last = (0, 0);
        b.load_to_memory(&path, &mut |done, total| last = (done, total)).unwrap();
        assert!(matches!(b, FileBytes::Anon { .. }));
        assert_eq!(last, (bytes.len() as u64, bytes.len() as u64));
        assert!(b.as_slice() == bytes.as_slice());
        std::fs::remove_file(&path).unwrap();
    }
}
