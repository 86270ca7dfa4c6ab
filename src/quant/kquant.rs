//! Helpers the K-quant formats share (ggml's super-blocks of QK_K = 256 elements): rounding,
//! the 6-bit packed scales/mins of Q4_K and Q5_K, and the scale searches of llama.cpp's
//! reference quantizers. Every f32 expression keeps the C operation order, because the
//! searches compare errors and a changed rounding can pick a different scale.

use half::f16;

use super::QK_K;

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is all zeros.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, the way ggml does it: adding 1.5 * 2^23 leaves the rounded
/// integer in the low mantissa bits. Exact for |value| <= 2^22 - 1 (ggml asserts that range;
/// outside it the result is meaningless but this never panics).
pub(super) fn nearest_int(value: f32) -> i32 {
    let bits = (value + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// The (scale, min) pair `j` (0..8) of the 12 packed bytes of Q4_K/Q5_K (`get_scale_min_k4`):
/// pairs 0-3 are the low 6 bits of bytes 0-3 / 4-7; pairs 4-7 take their low 4 bits from bytes
/// 8-11 and their top 2 bits from the spare top bits of bytes 0-3 / 4-7.
pub(super) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc, m)
    }
}

/// The inverse of `scale_min_k4` for eight 6-bit (scale, min) pairs.
pub(crate) fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4);
            q[j - 4] |= (ls[j] >> 4) << 6;
            q[j] |= (lm[j] >> 4) << 6;
        }
    }
    q
}

/// The grid of trial scales `make_qkx2_quants` searches: iscale = (rmin + rdelta*k + nmax) /
/// (max - min) for k in 0..=steps.
#[derive(Clone, Copy)]
pub(super) struct ScaleSearch {
    pub rmin: f32,
    pub rdelta: f32,
    pub steps: i32,
}

/// llama.cpp's `make_qkx2_quants` (squared error; `use_mad` false, the only mode Q4_K and Q5_K
/// use): fit x ≈ scale * l - min with l in 0..=nmax, weighted least squares over a grid of
/// trial scales. `x` has at most 32 elements. Writes the levels to `levels` and returns
/// (scale, min) with min >= 0.
pub(super) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    search: ScaleSearch,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels[..n].fill(0);
        return (0.0, -min);
    }
    let level = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, nmax);
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    for i in 0..n {
        levels[i] = level(iscale, x[i], min) as u8;
    }
    let mut best_error = weighted_sq_error(scale, min, &levels[..n], x, weights);
    let mut trial = [0u8; 32];
    let trial = &mut trial[..n];
    for step in 0..=search.steps {
        let iscale = (search.rmin + search.rdelta * step as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = level(iscale, x[i], min);
            trial[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 || det.is_nan() {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let error = weighted_sq_error(this_scale, this_min, trial, x, weights);
        if error < best_error {
            levels[..n].copy_from_slice(trial);
            best_error = error;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}

/// Σ w·(scale·l + min − x)², summed in element order as ggml does.
fn weighted_sq_error(scale: f32, min: f32, levels: &[u8], x: &[f32], weights: &[f32]) -> f32 {
    let mut error = 0.0f32;
    for ((&l, &v), &w) in levels.iter().zip(x).zip(weights) {
        let diff = scale * f32::from(l) + min - v;
        error += w * (diff * diff);
    }
    error
}

/// llama.cpp's `make_qx_quants` in the mode Q6_K's reference quantizer uses (`rmse_type` 1, no
/// importance weights, so each element weighs x²): fit x ≈ scale * l with l in -nmax..nmax-1,
/// trying 19 scales around nmax / max|x|. Writes l + nmax to `levels`, returns the scale (its
/// sign follows the element of largest magnitude).
pub(super) fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [u8]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels[..x.len()].fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    // Weighted sums for one trial scale: (Σ w·x·l, Σ w·l²) with w = x².
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let store = |iscale: f32, levels: &mut [u8]| {
        for (out, &v) in levels.iter_mut().zip(x) {
            *out = (level(iscale, v) + nmax) as u8;
        }
    };

    let iscale = -(nmax as f32) / max;
    store(iscale, levels);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&step| step != 0) {
        let iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            store(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// What Q4_K and Q5_K store besides their quant bits.
pub(super) struct SuperBlockK4 {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    /// One level per element, 0..=nmax.
    pub levels: [u8; QK_K],
}

/// The shared part of `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref`: fit each 32-element
/// sub-block as scale * l - min (weights av_x + |x|), quantize the 8 scales and 8 mins to 6 bits
/// against d = max_scale / 63 and dmin = max_min / 63, then requantize every element against
/// the scales as rounded (sub-blocks whose rounded scale is 0 keep their fitted levels).
pub(super) fn quantize_superblock_k4(x: &[f32], nmax: i32, search: ScaleSearch) -> SuperBlockK4 {
    let x = &x[..QK_K];
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let mut weights = [0.0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2 = xs.iter().fold(0.0f32, |sum, v| sum + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let out = &mut levels[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &weights, out, search);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // C stores nearest_int into a uint8_t (wrapping) and then clamps to 63.
    let six_bits = |v: f32| (nearest_int(v) as u8).min(63);
    let ls: [u8; 8] = std::array::from_fn(|j| six_bits(inv_scale * scales[j]));
    let lm: [u8; 8] = std::array::from_fn(|j| six_bits(inv_min * mins[j]));
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);

    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dl = d.to_f32() * f32::from(sc);
        if dl == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    SuperBlockK4 { d, dmin, scales: packed, levels }
}
