//! AMX (Advanced Matrix Extensions: Intel Xeon since Sapphire Rapids) tile kernels for products
//! of several tokens, where the AVX-512 kernels are bound by their arithmetic: one `tdpbssd`
//! multiplies a 16 × 32 tile of signed bytes by a 32 × 16 one into 16 × 16 i32 sums (8,192
//! multiply-adds), where a `vpdpbusd` does 64. Sixteen weight rows meet up to 16 tokens at once.
//!
//! Rust has no stable AMX intrinsics: the six instructions used (`ldtilecfg`, `tilezero`,
//! `tileloadd`, `tdpbssd`, `tilestored`, `tilerelease`) are inline assembly, each tile register
//! named, and the process asks Linux for the tile state once (`arch_prctl(ARCH_REQ_XCOMP_PERM)`,
//! without which the first tile instruction faults).
//!
//! # Safety
//! `available()` checks CPUID (AMX-TILE, AMX-INT8), the OS's XSAVE support for the tile state
//! (XCR0 bits 17 and 18) and that the permission was granted; the kernels run only in the
//! `Simd::Amx` family, which `Simd::is_available` refuses otherwise. Each kernel configures
//! the tiles itself (the configuration is per thread) and releases them before it returns.
//! Tile loads read exactly the rows and bytes configured, inside the slices asserted at the
//! top of each kernel.

use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::act::{ActQ8_0, GROUP_TOKENS};
use super::avx2::prefetch;
use super::avx512::{f16_at, hsum_epi32};

/// Whether this CPU and OS run AMX-INT8 tiles for this process (asked once).
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        // SAFETY: CPUID leaves 0, 1 and 7 exist on every x86_64 CPU Rust supports (leaf 7 is
        // checked against the highest leaf first); XGETBV runs only when CPUID says the OS
        // enabled it (OSXSAVE).
        unsafe {
            if __cpuid(0).eax < 7 {
                return false;
            }
            let leaf7 = __cpuid_count(7, 0);
            let (tile, int8) = (leaf7.edx >> 24 & 1 == 1, leaf7.edx >> 25 & 1 == 1);
            let osxsave = __cpuid(1).ecx >> 27 & 1 == 1;
            if !(tile && int8 && osxsave && is_x86_feature_detected!("avx512f")) {
                return false;
            }
            // XTILECFG (17) and XTILEDATA (18) enabled by the OS.
            if xcr0() >> 17 & 3 != 3 {
                return false;
            }
            request_tile_permission()
        }
    })
}

#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    _xgetbv(0)
}

/// Linux: `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, once per process; other
/// systems: no AMX here.
#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    let ret: i64;
    // SAFETY: the arch_prctl system call with these arguments only grants this process the
    // permission to use the tile state (or fails); it reads and writes no memory of ours.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}

/// Q8_0 · Q8_0 for one token, in `gemm_q8_0`'s order (so that a token alone and a token among
/// others give the same bits): per block the exact integer dot, then
/// acc = fma(d_a · d_w, dot, acc), blocks in order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0(row: &[u8], act: &[ActQ8_0]) -> f32 {
    assert_eq!(row.len(), act.len() * 34, "row is [blocks] of Q8_0");
    let w = row.as_ptr();
    let ones = _mm256_set1_epi16(1);
    let mut acc = 0f32;
    for (b, a) in act.iter().enumerate() {
        let blk = w.add(34 * b);
        prefetch(blk, 34);
        let qx = _mm256_loadu_si256(blk.add(2).cast());
        let qy = _mm256_loadu_si256(a.qs.as_ptr().cast());
        // |x| · sign(y, x): exact while y > -128 (activations are within ±127), pair sums
        // within i16.
        let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(qx), _mm256_sign_epi8(qy, qx));
        let dot = hsum_epi32(_mm256_madd_epi16(pairs, ones));
        acc = (a.d * f16_at(blk)).mul_add(dot as f32, acc);
    }
    acc
}

/// Prefetch `bytes` into L2: a tile task's first 16 rows (the kernel prefetches each next 16
/// while it computes).
pub(super) fn prefetch_l2(bytes: &[u8]) {
    for line in bytes.chunks(64) {
        // SAFETY: SSE is part of x86_64; the address lies inside `bytes`.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
}

/// The 64-byte operand of `ldtilecfg`: palette 1, then per tile register its bytes per row
/// and rows.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Q8_0 weights (up to 16 rows of `row_bytes`: [blocks] of d f16, qs[32]) times up to 16
/// tokens (act: [tokens, blocks]) into out[token][row]. Per block: the rows' 16 × 32 quants
/// as tile A (straight from the rows, `row_bytes` apart), loaded once; per token its 32 quants
/// as a 32 × 1 tile B and `tdpbssd` into a zeroed 16 × 1 tile C: the exact i32 dots of the
/// 16 rows, stored side by side, one vector. Then per token, the 16 rows at once:
/// acc = fma(d_w · d_a, dot, acc), blocks in order: `dot_q8_0`'s order, bit for bit.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn gemm_q8_0(
    w: &[u8],
    row_bytes: usize,
    act: &[ActQ8_0],
    out: &mut [[f32; 16]; GROUP_TOKENS],
) {
    let blocks = row_bytes / 34;
    let rows = w.len() / row_bytes.max(1);
    assert!(blocks > 0 && row_bytes == blocks * 34, "rows are [blocks] of Q8_0");
    assert!((1..=16).contains(&rows) && w.len() == rows * row_bytes, "1 to 16 whole rows");
    let tokens = act.len() / blocks;
    assert!((1..=GROUP_TOKENS).contains(&tokens), "1 to 16 tokens");
    assert_eq!(act.len(), tokens * blocks, "act is [tokens, blocks]");
    // tmm0: A, rows × 32 i8; tmm1, tmm2: C, rows × 1 i32; tmm3, tmm4: B, 8 × 4 i8.
    let mut cfg =
        TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    (cfg.colsb[0], cfg.rows[0]) = (32, rows as u8);
    for c in [1, 2] {
        (cfg.colsb[c], cfg.rows[c]) = (4, rows as u8);
    }
    for b in [3, 4] {
        (cfg.colsb[b], cfg.rows[b]) = (4, 8);
    }
    #[repr(align(64))]
    struct Dots([[i32; 16]; GROUP_TOKENS]);
    let mut dots = Dots([[0; 16]; GROUP_TOKENS]);
    let mut acc = [_mm512_setzero_ps(); GROUP_TOKENS];
    asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
    let wp = w.as_ptr();
    let row_mask: __mmask16 = ((1u32 << rows) - 1) as __mmask16;
    let row_offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(row_bytes as i32),
    );
    let lines_per_block = w.len().div_ceil(64).div_ceil(blocks);
    for b in 0..blocks {
        // The next 16 rows (contiguous after these) into L2, a share per block: one
        // sequential stream (tile A reads 16 rows at once, more streams than the prefetchers
        // and the L1's fill buffers follow from memory).
        for line in b * lines_per_block..(b + 1) * lines_per_block {
            _mm_prefetch::<_MM_HINT_T1>(wp.wrapping_add(w.len() + 64 * line).cast());
        }
        asm!(
            "tileloadd tmm0, [{a} + {stride}*1]",
            a = in(reg) wp.add(34 * b + 2),
            stride = in(reg) row_bytes,
            options(nostack, readonly),
        );
        // Two tokens at a time, on two pairs of tiles; an odd last token alone (not twice:
        // one token a block is the decode case, and a second `tdpbssd` costs it ~20%).
        for t in (0..tokens).step_by(2) {
            let (x0, c0) = (act[t * blocks + b].qs.as_ptr(), dots.0[t].as_mut_ptr());
            if t + 1 == tokens {
                asm!(
                    "tilezero tmm1",
                    "tileloadd tmm3, [{x0} + {four}*1]",
                    "tdpbssd tmm1, tmm0, tmm3",
                    "tilestored [{c0} + {four}*1], tmm1",
                    x0 = in(reg) x0,
                    c0 = in(reg) c0,
                    four = in(reg) 4usize,
                    options(nostack),
                );
                continue;
            }
            let (x1, c1) = (act[(t + 1) * blocks + b].qs.as_ptr(), dots.0[t + 1].as_mut_ptr());
            asm!(
                "tilezero tmm1",
                "tilezero tmm2",
                "tileloadd tmm3, [{x0} + {four}*1]",
                "tileloadd tmm4, [{x1} + {four}*1]",
                "tdpbssd tmm1, tmm0, tmm3",
                "tdpbssd tmm2, tmm0, tmm4",
                "tilestored [{c0} + {four}*1], tmm1",
                "tilestored [{c1} + {four}*1], tmm2",
                x0 = in(reg) x0,
                x1 = in(reg) x1,
                c0 = in(reg) c0,
                c1 = in(reg) c1,
                four = in(reg) 4usize,
                options(nostack),
            );
        }
        // The rows' d (f16) for this block: 4 bytes gathered at each row's block (d and the
        // first two quants), the low halves kept.
        let words = _mm512_mask_i32gather_epi32::<1>(
            _mm512_setzero_si512(),
            row_mask,
            row_offsets,
            wp.add(34 * b).cast(),
        );
        let d_w = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(words));
        for (t, acc) in acc.iter_mut().enumerate().take(tokens) {
            let d = _mm512_mul_ps(d_w, _mm512_set1_ps(act[t * blocks + b].d));
            let sums = _mm512_cvtepi32_ps(_mm512_loadu_si512(dots.0[t].as_ptr().cast()));
            *acc = _mm512_fmadd_ps(d, sums, *acc);
        }
    }
    asm!("tilerelease", options(nostack, nomem));
    for (o, acc) in out.iter_mut().zip(&acc).take(tokens) {
        _mm512_storeu_ps(o.as_mut_ptr(), *acc);
    }
}
