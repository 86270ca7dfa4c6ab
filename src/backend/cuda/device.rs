//! The device layer over the runtime wrappers of abi.h: error checking, one device with its
//! compute stream, device buffers that free themselves, events for timing.

use std::ffi::{c_void, CStr};
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
            if p.is_null() {
                String::new()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            }
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
pub struct Gpu {
    pub ordinal: usize,
    pub info: DeviceInfo,
    stream: *mut c_void,
}

// SAFETY: the stream handle is only used through the runtime, which is thread-safe. The
// runtime's current device is per host thread: whoever moves a Gpu to another thread calls
// `make_current` there before using it (the rotary's CudaDevice does on every entry point).
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

thread_local! {
    /// The device this thread last made current (-1: none yet): cudaSetDevice only on change.
    static CURRENT: std::cell::Cell<i32> = const { std::cell::Cell::new(-1) };
}

/// Make `ordinal` the calling thread's current device.
fn set_current(ordinal: usize) -> Result<()> {
    if CURRENT.with(|c| c.get()) != ordinal as i32 {
        // SAFETY: the ordinal was validated when the Gpu opened.
        check(unsafe { ffi::rotary_set_device(ordinal as i32) }, "cudaSetDevice")?;
        CURRENT.with(|c| c.set(ordinal as i32));
    }
    Ok(())
}

impl Gpu {
    /// Device `ordinal`: `NoCudaDevice` when the runtime finds none (no driver, no GPU).
    pub fn open(ordinal: usize) -> Result<Gpu> {
        let mut count = 0i32;
        // SAFETY: count is a valid out-pointer.
        let code = unsafe { ffi::rotary_device_count(&mut count) };
        if code != 0 || count == 0 {
            let reason = if code != 0 {
                let detail = check(code, "cudaGetDeviceCount")
                    .err()
                    .map_or(String::new(), |e| e.to_string());
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
        check(
            unsafe { ffi::rotary_device_info(ordinal as i32, &mut raw) },
            "cudaGetDeviceProperties",
        )?;
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
        Ok(Gpu { ordinal, info, stream })
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
}

impl Drop for Gpu {
    fn drop(&mut self) {
        // SAFETY: the stream was created by this Gpu and is destroyed once.
        unsafe { ffi::rotary_stream_destroy(self.stream) };
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

    pub fn record(&self, dev: &Gpu) -> Result<()> {
        // SAFETY: both handles are alive.
        check(unsafe { ffi::rotary_event_record(self.0, dev.stream()) }, "cudaEventRecord")
    }

    /// Milliseconds from `start` to `self` (both recorded; waits for self).
    pub fn elapsed_ms_since(&self, start: &Event) -> Result<f32> {
        // SAFETY: both handles are alive.
        check(unsafe { ffi::rotary_event_synchronize(self.0) }, "cudaEventSynchronize")?;
        let mut ms = 0f32;
        // SAFETY: valid out-pointer and live events.
        check(
            unsafe { ffi::rotary_event_elapsed_ms(&mut ms, start.0, self.0) },
            "cudaEventElapsedTime",
        )?;
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by Event::new, destroyed once.
        unsafe { ffi::rotary_event_destroy(self.0) };
    }
}
