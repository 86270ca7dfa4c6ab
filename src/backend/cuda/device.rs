//! The device layer over the runtime wrappers of abi.h: error checking, one device with its
//! compute stream, device buffers that free themselves, events for timing.

use std::ffi::{c_void, CStr};
use std::marker::PhantomData;
use std::ptr;

use super::ffi;
use crate::error::{Error, Result};

/// Map a runtime return code to `Error::Cuda` naming the call.
pub fn check(code: i32, call: &str) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: the runtime returns pointers to static NUL-terminated strings for any code.
    let (name, message) = unsafe {
        let n = ffi::rotary_error_name(code);
        let m = ffi::rotary_error_string(code);
        let s = |p: *const std::os::raw::c_char| {
            if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() }
        };
        (s(n), s(m))
    };
    Err(Error::Cuda { call: call.to_string(), code, name, message })
}

/// The emulated build's own counters (csrc/emu/runtime.cpp): live events, device memory charged
/// as a driver would and its peak since `emu_reset_peak`. Tests read them; a GPU has no such
/// thing.
#[cfg(rotary_emu)]
pub fn emu_stats(ordinal: usize) -> Result<ffi::RotaryEmuStats> {
    // SAFETY: a plain C struct of integers: all zeros is a valid value.
    let mut s: ffi::RotaryEmuStats = unsafe { std::mem::zeroed() };
    // SAFETY: s is a valid out-struct of the ABI's layout.
    check(unsafe { ffi::rotary_emu_stats(ordinal as i32, &mut s) }, "rotary_emu_stats")?;
    Ok(s)
}

#[cfg(rotary_emu)]
pub fn emu_reset_peak(ordinal: usize) -> Result<()> {
    // SAFETY: no pointers.
    check(unsafe { ffi::rotary_emu_reset_peak(ordinal as i32) }, "rotary_emu_reset_peak")
}

/// Element types that may live in a device buffer (plain bits, no drop, any bit pattern valid).
pub trait DeviceCopy: Copy + Default + 'static {}
impl DeviceCopy for u8 {}
impl DeviceCopy for u16 {}
impl DeviceCopy for i32 {}
impl DeviceCopy for u64 {}
impl DeviceCopy for f32 {}

/// What the device says about itself.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub name: String,
    pub sm: u32,
    pub sm_count: u32,
    pub total_bytes: u64,
    pub driver_version: i32,
    pub runtime_version: i32,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = self.total_bytes as f64 / (1u64 << 30) as f64;
        write!(f, "{} (sm_{}, {} SMs, {gib:.1} GiB)", self.name, self.sm, self.sm_count)
    }
}

/// One CUDA device, made current, with the stream every kernel of this process runs on.
pub struct Device {
    pub ordinal: usize,
    pub info: DeviceInfo,
    stream: *mut c_void,
}

// SAFETY: the stream handle is only used through the runtime, which is thread-safe. The
// runtime's current device is per host thread: whoever moves a Device to another thread calls
// `make_current` there before using it (the rotary's CudaDevice does on every entry point).
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

thread_local! {
    /// The device this thread last made current (-1: none yet): cudaSetDevice only on change.
    static CURRENT: std::cell::Cell<i32> = const { std::cell::Cell::new(-1) };
}

/// Make `ordinal` the calling thread's current device.
fn set_current(ordinal: usize) -> Result<()> {
    if CURRENT.with(|c| c.get()) != ordinal as i32 {
        // SAFETY: the ordinal was validated when the Device opened.
        check(unsafe { ffi::rotary_set_device(ordinal as i32) }, "cudaSetDevice")?;
        CURRENT.with(|c| c.set(ordinal as i32));
    }
    Ok(())
}

impl Device {
    /// Device `ordinal`: `NoCudaDevice` when the runtime finds none (no driver, no GPU).
    pub fn open(ordinal: usize) -> Result<Device> {
        let mut count = 0i32;
        // SAFETY: count is a valid out-pointer.
        let code = unsafe { ffi::rotary_device_count(&mut count) };
        if code != 0 || count == 0 {
            let reason = if code != 0 {
                let detail = check(code, "cudaGetDeviceCount").err().map_or(String::new(), |e| e.to_string());
                format!("no usable NVIDIA driver or GPU on this machine ({detail})")
            } else {
                "the driver reports 0 devices".to_string()
            };
            return Err(Error::NoCudaDevice { reason });
        }
        if ordinal >= count as usize {
            return Err(Error::NoCudaDevice { reason: format!("device {ordinal} of {count}") });
        }
        set_current(ordinal)?;
        let mut raw = ffi::RotaryDeviceInfo::default();
        // SAFETY: raw is a valid out-struct of the ABI's layout.
        check(unsafe { ffi::rotary_device_info(ordinal as i32, &mut raw) }, "cudaGetDeviceProperties")?;
        // SAFETY: the wrapper NUL-terminates name within its 256 bytes.
        let name = unsafe { CStr::from_ptr(raw.name.as_ptr()) }.to_string_lossy().into_owned();
        let info = DeviceInfo {
            name,
            sm: (raw.cc_major * 10 + raw.cc_minor) as u32,
            sm_count: raw.sm_count as u32,
            total_bytes: raw.total_bytes,
            driver_version: raw.driver_version,
            runtime_version: raw.runtime_version,
        };
        let mut stream = ptr::null_mut();
        // SAFETY: stream is a valid out-pointer.
        check(unsafe { ffi::rotary_stream_create(&mut stream) }, "cudaStreamCreate")?;
        Ok(Device { ordinal, info, stream })
    }

    pub fn stream(&self) -> *mut c_void {
        self.stream
    }

    /// Make this device the calling thread's current one (cudaSetDevice is per thread: work
    /// from a thread that never set it would go to device 0).
    pub fn make_current(&self) -> Result<()> {
        set_current(self.ordinal)
    }

    /// Wait for everything queued on the stream; errors of earlier async launches surface here.
    pub fn sync(&self) -> Result<()> {
        self.make_current()?;
        // SAFETY: the stream is alive for self's lifetime.
        check(unsafe { ffi::rotary_stream_synchronize(self.stream) }, "cudaStreamSynchronize")
    }

    /// (free, total) device bytes.
    pub fn mem_info(&self) -> Result<(u64, u64)> {
        self.make_current()?;
        let (mut free, mut total) = (0u64, 0u64);
        // SAFETY: valid out-pointers.
        check(unsafe { ffi::rotary_mem_info(&mut free, &mut total) }, "cudaMemGetInfo")?;
        Ok((free, total))
    }

    /// A zeroed device buffer of `len` elements; `what` names it in errors.
    pub fn alloc<T: DeviceCopy>(&self, len: usize, what: &str) -> Result<DevBuf<T>> {
        let bytes = (len.max(1) * std::mem::size_of::<T>()) as u64;
        let (free, _) = self.mem_info()?; // (makes the device current)
        if bytes > free {
            return Err(Error::DeviceOutOfMemory { what: what.into(), bytes_requested: bytes, bytes_free: free });
        }
        let mut p = ptr::null_mut();
        // SAFETY: p is a valid out-pointer; the buffer is freed in DevBuf::drop.
        let code = unsafe { ffi::rotary_malloc(&mut p, bytes) };
        if code != 0 {
            return Err(Error::DeviceOutOfMemory { what: what.into(), bytes_requested: bytes, bytes_free: free });
        }
        let buf = DevBuf { ptr: p.cast::<T>(), len, _t: PhantomData };
        // SAFETY: p holds `bytes` bytes.
        check(unsafe { ffi::rotary_memset_async(p, 0, bytes, self.stream) }, "cudaMemsetAsync")?;
        Ok(buf)
    }

    /// A device copy of `data`.
    pub fn upload<T: DeviceCopy>(&self, data: &[T], what: &str) -> Result<DevBuf<T>> {
        let mut buf = self.alloc(data.len(), what)?;
        self.write(&mut buf, 0, data)?;
        self.sync()?;
        Ok(buf)
    }

    /// Copy `data` into `buf` at element `at`, queued on the stream. From pageable memory the
    /// runtime has staged the bytes when this returns, so `data` may be reused at once.
    pub fn write<T: DeviceCopy>(&self, buf: &mut DevBuf<T>, at: usize, data: &[T]) -> Result<()> {
        assert!(at + data.len() <= buf.len, "write {}+{} into {}", at, data.len(), buf.len);
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: the destination range is inside buf (asserted); the source is a live slice.
        unsafe { self.memcpy(buf.ptr.add(at).cast(), data.as_ptr().cast(), std::mem::size_of_val(data), ffi::RotaryCopyKind::ROTARY_COPY_H2D) }
    }

    /// Copy `out.len()` elements of `buf` from element `at` to the host (waits for the stream).
    pub fn read<T: DeviceCopy>(&self, buf: &DevBuf<T>, at: usize, out: &mut [T]) -> Result<()> {
        assert!(at + out.len() <= buf.len, "read {}+{} from {}", at, out.len(), buf.len);
        if out.is_empty() {
            return Ok(());
        }
        // SAFETY: the source range is inside buf (asserted); out is a live, writable slice.
        unsafe { self.memcpy(out.as_mut_ptr().cast(), buf.ptr.add(at).cast(), std::mem::size_of_val(out), ffi::RotaryCopyKind::ROTARY_COPY_D2H)? };
        self.sync()
    }

    /// Queue a copy of `bytes` on the stream.
    ///
    /// # Safety
    /// `dst` and `src` must be valid for `bytes` in the memory spaces `kind` names.
    unsafe fn memcpy(&self, dst: *mut std::ffi::c_void, src: *const std::ffi::c_void, bytes: usize, kind: ffi::RotaryCopyKind) -> Result<()> {
        self.make_current()?;
        // SAFETY: the caller's contract.
        let code = unsafe { ffi::rotary_memcpy_async(dst, src, bytes as u64, kind, self.stream) };
        check(code, &format!("cudaMemcpyAsync({kind:?})"))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the stream was created by this Device and is destroyed once.
        unsafe { ffi::rotary_stream_destroy(self.stream) };
    }
}

/// `len` elements of T in device memory, freed on drop.
pub struct DevBuf<T: DeviceCopy> {
    ptr: *mut T,
    len: usize,
    _t: PhantomData<T>,
}

// SAFETY: a device pointer is an address in the device's space; moving it between threads is
// safe, and all access goes through the runtime.
unsafe impl<T: DeviceCopy> Send for DevBuf<T> {}
unsafe impl<T: DeviceCopy> Sync for DevBuf<T> {}

impl<T: DeviceCopy> DevBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&self) -> u64 {
        (self.len * std::mem::size_of::<T>()) as u64
    }

    pub fn ptr(&self) -> *const T {
        self.ptr
    }

    pub fn mut_ptr(&self) -> *mut T {
        self.ptr
    }

    /// The device address of element `at` (for kernels that take an offset view).
    pub fn ptr_at(&self, at: usize) -> *mut T {
        assert!(at <= self.len, "offset {at} of {}", self.len);
        // SAFETY: at <= len: inside the allocation or one past its end.
        unsafe { self.ptr.add(at) }
    }

    /// The address as an integer (for device-side pointer tables).
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
}

impl<T: DeviceCopy> Drop for DevBuf<T> {
    fn drop(&mut self) {
        // SAFETY: ptr came from rotary_malloc and is freed once.
        unsafe { ffi::rotary_free(self.ptr.cast()) };
    }
}

/// A CUDA event, for timing work on the stream.
pub struct Event(*mut c_void);

impl Event {
    pub fn new() -> Result<Event> {
        let mut e = ptr::null_mut();
        // SAFETY: valid out-pointer; destroyed in drop.
        check(unsafe { ffi::rotary_event_create_timing(&mut e) }, "cudaEventCreate")?;
        Ok(Event(e))
    }

    pub fn record(&self, dev: &Device) -> Result<()> {
        // SAFETY: both handles are alive.
        check(unsafe { ffi::rotary_event_record(self.0, dev.stream()) }, "cudaEventRecord")
    }

    /// Milliseconds from `start` to `self` (both recorded; waits for self).
    pub fn elapsed_ms_since(&self, start: &Event) -> Result<f32> {
        // SAFETY: both handles are alive.
        check(unsafe { ffi::rotary_event_synchronize(self.0) }, "cudaEventSynchronize")?;
        let mut ms = 0f32;
        // SAFETY: valid out-pointer and live events.
        check(unsafe { ffi::rotary_event_elapsed_ms(&mut ms, start.0, self.0) }, "cudaEventElapsedTime")?;
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by Event::new, destroyed once.
        unsafe { ffi::rotary_event_destroy(self.0) };
    }
}
