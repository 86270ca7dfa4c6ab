//! The Gated DeltaNet's two prefill forms: the chunked (WY / UT-transform) form gives the
//! recurrence's outputs and final state, for any length (shorter than a chunk, several chunks,
//! a ragged last chunk), both value-head orders, a non-zero starting state and strong decay.

use rotary::ops::deltanet::{self, Shape};
use rotary::synth::random_f32;

fn nmse(want: &[f32], got: &[f32]) -> f64 {
    let num: f64 = want.iter().zip(got).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    num / want.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().max(1e-30)
}

fn check(sh: &Shape, n: usize, chunk: usize, decay_mean: f32, seed: u64) {
    let (nv, dv) = (sh.n_v_heads, sh.head_v);
    let qkv = random_f32(n * sh.channels(), 0.0, 1.0, seed);
    let beta: Vec<f32> =
        random_f32(n * nv, 0.0, 3.0, seed + 1).iter().map(|&x| deltanet::sigmoid(x)).collect();
    let decay: Vec<f32> = random_f32(n * nv, decay_mean, 0.05, seed + 2)
        .iter()
        .map(|&x| x.clamp(1e-3, 1.0))
        .collect();
    let s0 = random_f32(sh.state_len(), 0.0, 0.5, seed + 3);
    let (mut s_rec, mut s_chk) = (s0.clone(), s0);
    let (mut o_rec, mut o_chk) = (vec![0f32; n * nv * dv], vec![0f32; n * nv * dv]);
    deltanet::delta_rule(&qkv, &beta, &decay, &mut s_rec, sh, n, &mut o_rec);
    deltanet::delta_rule_chunked(&qkv, &beta, &decay, &mut s_chk, sh, n, &mut o_chk, chunk);
    let (eo, es) = (nmse(&o_rec, &o_chk), nmse(&s_rec, &s_chk));
    println!("n {n} chunk {chunk} decay {decay_mean} tiled {}: outputs NMSE {eo:.2e}, state NMSE {es:.2e}", sh.tiled);
    assert!(eo <= 1e-9 && es <= 1e-9, "n {n} chunk {chunk}: outputs {eo:e}, state {es:e}");
}

#[test]
fn chunked_form_equals_the_recurrence() {
    for tiled in [true, false] {
        let sh =
            Shape { n_k_heads: 2, n_v_heads: 6, head_k: 16, head_v: 24, conv_kernel: 4, tiled };
        for (n, chunk) in [(1, 64), (5, 64), (64, 64), (150, 64), (37, 7), (20, 1)] {
            check(&sh, n, chunk, 0.9, 11 + n as u64);
        }
        check(&sh, 70, 64, 0.2, 5); // fast forgetting: e^G spans many orders within a chunk
    }
}
