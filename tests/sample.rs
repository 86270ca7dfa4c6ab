//! Sampler and stop-string tests.
//!
//! The sampler is checked against its definition (llama.cpp's chain): greedy is the argmax, the
//! truncations keep the sets they promise, and drawn frequencies match the softmax of the kept
//! logits within 3 sigma. Stop strings are checked on every split of a text into chunks.

use rotary::sample::{Sampler, SamplerParams, StopStrings, SEED_DEFAULT};
use rotary::Error;

/// Deterministic test logits (splitmix64 → uniform in [-scale, scale)).
fn logits(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Temperature 1 with every truncation and the penalty off.
fn plain() -> SamplerParams {
    SamplerParams { temp: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, ..SamplerParams::default() }
}

fn greedy() -> SamplerParams {
    SamplerParams { temp: 0.0, ..SamplerParams::default() }
}

fn sampler(params: SamplerParams) -> Sampler {
    Sampler::new(params).expect("valid params")
}

fn draws(params: SamplerParams, logits: &[f32], n: usize) -> Vec<u32> {
    let mut s = sampler(params);
    (0..n).map(|_| s.sample(logits, &[]).unwrap()).collect()
}

/// First index of the maximum, computed independently of the sampler.
fn argmax(logits: &[f32]) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    logits.iter().position(|&l| l == max).unwrap() as u32
}

/// Logits whose softmax is exactly `probs`.
fn logits_of(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

fn softmax(logits: &[f32], temp: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / temp).exp()).collect();
    let total: f64 = w.iter().sum();
    w.iter().map(|x| x / total).collect()
}

/// Empirical frequencies of `n` draws vs `expected`, each within 3 sigma (binomial).
fn assert_frequencies(params: SamplerParams, logits: &[f32], expected: &[f64], n: usize) {
    let mut counts = vec![0usize; logits.len()];
    for id in draws(params, logits, n) {
        counts[id as usize] += 1;
    }
    for (id, (&count, &p)) in counts.iter().zip(expected).enumerate() {
        let mean = n as f64 * p;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        let diff = (count as f64 - mean).abs();
        assert!(
            diff <= 3.0 * sigma,
            "token {id}: {count} of {n} draws, expected {mean:.1} ± {sigma:.1} (p = {p:.4})"
        );
    }
}

// --- greedy -----------------------------------------------------------------------------------

#[test]
fn greedy_picks_argmax() {
    for seed in 0..20 {
        let l = logits(1000, seed, 10.0);
        assert_eq!(sampler(greedy()).sample(&l, &[]).unwrap(), argmax(&l), "seed {seed}");
    }
}

#[test]
fn greedy_ties_pick_lowest_id() {
    let l = [1.0, 3.0, 2.0, 3.0, 3.0];
    assert_eq!(sampler(greedy()).sample(&l, &[]).unwrap(), 1);
    let l = [f32::NEG_INFINITY, 0.5, 0.5];
    assert_eq!(sampler(greedy()).sample(&l, &[]).unwrap(), 1);
}

#[test]
fn top_k_1_equals_greedy() {
    let params = SamplerParams { top_k: 1, ..plain() };
    for seed in 0..10 {
        let l = logits(5000, seed, 3.0);
        assert!(draws(params.clone(), &l, 20).iter().all(|&id| id == argmax(&l)), "seed {seed}");
    }
}

#[test]
fn tiny_top_p_equals_greedy() {
    let params = SamplerParams { top_p: 1e-6, ..plain() };
    for seed in 0..10 {
        let l = logits(5000, seed, 3.0);
        assert!(draws(params.clone(), &l, 20).iter().all(|&id| id == argmax(&l)), "seed {seed}");
    }
}

#[test]
fn min_p_1_keeps_only_max() {
    let params = SamplerParams { min_p: 1.0, ..plain() };
    for seed in 0..10 {
        let l = logits(5000, seed, 0.1); // nearly flat: without min-p, draws would scatter
        assert!(draws(params.clone(), &l, 20).iter().all(|&id| id == argmax(&l)), "seed {seed}");
    }
}

#[test]
fn low_temperature_approaches_greedy() {
    let l = logits(2000, 7, 2.0);
    let all_argmax = |temp: f32| {
        let params = SamplerParams { temp, ..plain() };
        draws(params, &l, 200).iter().all(|&id| id == argmax(&l))
    };
    assert!(!all_argmax(1.0), "temp 1 on 2000 logits should not always pick the argmax");
    assert!(all_argmax(1e-4));
}

// --- determinism ------------------------------------------------------------------------------

#[test]
fn same_seed_same_sequence() {
    let l = logits(151_936, 3, 4.0);
    for params in [SamplerParams::default(), plain(), SamplerParams { top_k: 0, ..plain() }] {
        let a = draws(params.clone(), &l, 50);
        let b = draws(params, &l, 50);
        assert_eq!(a, b);
    }
}

#[test]
fn different_seed_different_sequence() {
    let l = [0.0f32; 8];
    let a = draws(SamplerParams { seed: 1, ..plain() }, &l, 32);
    let b = draws(SamplerParams { seed: 2, ..plain() }, &l, 32);
    assert_ne!(a, b);
}

// --- distributions ----------------------------------------------------------------------------

#[test]
fn frequencies_match_softmax() {
    let l = [1.0f32, 0.0, 2.0, -1.0, 0.5];
    assert_frequencies(plain(), &l, &softmax(&l, 1.0), 20_000);
}

#[test]
fn temperature_scales_logits() {
    let l = [1.0f32, 0.0, 2.0, -1.0, 0.5];
    for temp in [0.5f32, 2.0] {
        let params = SamplerParams { temp, ..plain() };
        assert_frequencies(params, &l, &softmax(&l, temp as f64), 20_000);
    }
}

#[test]
fn top_k_renormalizes_the_k_best() {
    let l = logits_of(&[0.1, 0.4, 0.2, 0.3]);
    let params = SamplerParams { top_k: 2, ..plain() };
    assert_frequencies(params, &l, &[0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0], 20_000);
}

#[test]
fn top_p_keeps_smallest_set_reaching_p() {
    // Sorted: 0.5, 0.3 (cumulative 0.8 >= 0.7: stop), 0.2 dropped.
    let l = logits_of(&[0.2, 0.5, 0.3]);
    let params = SamplerParams { top_p: 0.7, ..plain() };
    assert_frequencies(params, &l, &[0.0, 0.625, 0.375], 20_000);
}

#[test]
fn min_p_drops_tokens_below_fraction_of_max() {
    // Threshold 0.5 * 0.5 = 0.25: 0.3 stays, 0.2 goes.
    let l = logits_of(&[0.5, 0.3, 0.2]);
    let params = SamplerParams { min_p: 0.5, ..plain() };
    assert_frequencies(params, &l, &[0.625, 0.375, 0.0], 20_000);
}

#[test]
fn default_chain_on_full_vocab_stays_in_top_k() {
    let l = logits(151_936, 11, 8.0);
    let mut order: Vec<u32> = (0..l.len() as u32).collect();
    order.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]));
    let top_40 = &order[..40];
    let ids = draws(SamplerParams::default(), &l, 200);
    assert!(ids.iter().all(|id| top_40.contains(id)));
    assert!(ids.iter().any(|&id| id != order[0]), "temp 0.8 on flat-ish logits never varied");
}

// --- repetition penalty -----------------------------------------------------------------------

#[test]
fn repetition_penalty_lowers_rank() {
    let params = SamplerParams { repeat_penalty: 1.5, ..greedy() };
    // Positive logit divided: 2.0 → 1.33 < 1.9.
    let mut s = sampler(params.clone());
    assert_eq!(s.sample(&[2.0, 1.9, 0.0], &[]).unwrap(), 0);
    assert_eq!(s.sample(&[2.0, 1.9, 0.0], &[0]).unwrap(), 1);
    // Negative logit multiplied: -1.0 → -1.5 < -1.2.
    assert_eq!(s.sample(&[-1.0, -1.2], &[]).unwrap(), 0);
    assert_eq!(s.sample(&[-1.0, -1.2], &[0]).unwrap(), 1);
    // Ids outside the vocabulary in the history are ignored.
    assert_eq!(s.sample(&[2.0, 1.9], &[7, 1_000_000]).unwrap(), 0);
}

#[test]
fn repetition_penalty_applies_once_per_id() {
    // llama.cpp penalizes a token once however often it occurs: 3.0 / 2 = 1.5 > 1.4.
    let params = SamplerParams { repeat_penalty: 2.0, ..greedy() };
    assert_eq!(sampler(params).sample(&[3.0, 1.4], &[0, 0, 0, 0]).unwrap(), 0);
}

#[test]
fn repetition_penalty_sees_only_last_n() {
    let params = SamplerParams { repeat_penalty: 2.0, repeat_last_n: 2, ..greedy() };
    let l = [2.0, 1.5, 0.0];
    let mut s = sampler(params);
    assert_eq!(s.sample(&l, &[0, 2, 2]).unwrap(), 0);
    assert_eq!(s.sample(&l, &[2, 0, 2]).unwrap(), 1);
    let off = SamplerParams { repeat_penalty: 2.0, repeat_last_n: 0, ..greedy() };
    assert_eq!(sampler(off).sample(&l, &[0]).unwrap(), 0);
}

#[test]
fn repetition_penalty_applies_when_sampling() {
    let l = logits_of(&[0.6, 0.4]);
    let params = SamplerParams { repeat_penalty: 100.0, ..plain() };
    // 0.6 → logit ln 0.6 < 0 is multiplied by 100: probability ~0.
    let mut s = sampler(params);
    assert!((0..200).all(|_| s.sample(&l, &[0]).unwrap() == 1));
}

// --- validation and non-finite logits --------------------------------------------------------

#[test]
fn defaults_are_llama_cpp() {
    let d = SamplerParams::default();
    assert_eq!((d.temp, d.top_k, d.top_p, d.min_p), (0.8, 40, 0.95, 0.05));
    assert_eq!((d.repeat_penalty, d.repeat_last_n, d.seed), (1.0, 64, SEED_DEFAULT));
    d.validate().unwrap();
    greedy().validate().unwrap();
}

#[test]
fn validate_rejects_bad_params() {
    let d = SamplerParams::default;
    let bad = [
        ("temp", SamplerParams { temp: f32::NAN, ..d() }),
        ("temp", SamplerParams { temp: f32::INFINITY, ..d() }),
        ("temp", SamplerParams { temp: -0.1, ..d() }),
        ("top_p", SamplerParams { top_p: 0.0, ..d() }),
        ("top_p", SamplerParams { top_p: 1.01, ..d() }),
        ("top_p", SamplerParams { top_p: f32::NAN, ..d() }),
        ("min_p", SamplerParams { min_p: -0.01, ..d() }),
        ("min_p", SamplerParams { min_p: 1.5, ..d() }),
        ("min_p", SamplerParams { min_p: f32::NAN, ..d() }),
        ("repeat_penalty", SamplerParams { repeat_penalty: 0.0, ..d() }),
        ("repeat_penalty", SamplerParams { repeat_penalty: -1.0, ..d() }),
        ("repeat_penalty", SamplerParams { repeat_penalty: f32::NAN, ..d() }),
    ];
    for (name, params) in bad {
        match params.validate() {
            Err(Error::Usage(msg)) => assert!(msg.contains(name), "{name}: message {msg:?}"),
            other => panic!("{name} in {params:?}: expected Error::Usage, got {other:?}"),
        }
        assert!(Sampler::new(params).is_err());
    }
}

#[test]
fn nan_is_never_drawn() {
    let l = [f32::NAN, 0.0, f32::NAN, 0.0];
    assert_eq!(sampler(greedy()).sample(&l, &[]).unwrap(), 1);
    let ids = draws(plain(), &l, 500);
    assert!(ids.iter().all(|&id| id == 1 || id == 3));
    assert!(ids.contains(&1) && ids.contains(&3));
}

#[test]
fn positive_infinity_is_the_maximum() {
    let l = [5.0, f32::INFINITY, 1e30, f32::NAN];
    assert_eq!(sampler(greedy()).sample(&l, &[]).unwrap(), 1);
    assert!(draws(plain(), &l, 100).iter().all(|&id| id == 1));
}

#[test]
fn all_non_finite_is_an_error() {
    let l = [f32::NAN, f32::NEG_INFINITY, f32::NAN];
    for params in [greedy(), plain(), SamplerParams::default()] {
        match sampler(params).sample(&l, &[]) {
            Err(Error::Usage(msg)) => assert!(msg.contains("non-finite"), "{msg}"),
            other => panic!("expected Error::Usage, got {other:?}"),
        }
    }
    assert!(matches!(sampler(plain()).sample(&[], &[]), Err(Error::Usage(_))));
}

// --- stop strings -----------------------------------------------------------------------------

/// Feed `chunks`; return everything emitted (flushed at the end) and whether it stopped.
fn run_stops(stops: &[&str], chunks: &[&str]) -> (String, bool) {
    let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
    let mut out = String::new();
    for chunk in chunks {
        let (text, stopped) = s.push(chunk);
        out.push_str(&text);
        if stopped {
            return (out, true);
        }
    }
    out.push_str(&s.flush());
    (out, false)
}

#[test]
fn stop_matches_across_chunks() {
    let mut s = StopStrings::new(vec![" STOP".into()]);
    assert_eq!(s.push("Hel"), ("Hel".to_string(), false));
    assert_eq!(s.push("lo STOP"), ("lo".to_string(), true));
    assert_eq!(s.push("more"), (String::new(), true));
    assert!(s.is_stopped());
    assert_eq!(s.flush(), "");

    let mut s = StopStrings::new(vec![" STOP".into()]);
    assert_eq!(s.push("Hello S"), ("Hello".to_string(), false));
    assert_eq!(s.push("TO"), (String::new(), false));
    assert_eq!(s.push("P tail"), (String::new(), true));
}

#[test]
fn stop_on_every_split() {
    let text = "héllo wörld STOP après";
    let bounds: Vec<usize> = (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect();
    for &i in &bounds {
        for &j in bounds.iter().filter(|&&j| j >= i) {
            let chunks = [&text[..i], &text[i..j], &text[j..]];
            assert_eq!(run_stops(&["STOP"], &chunks), ("héllo wörld ".into(), true), "{i} {j}");
        }
    }
}

#[test]
fn stop_earliest_of_several() {
    assert_eq!(run_stops(&["\n\n", "User:"], &["abc Us", "er: x\n\n"]), ("abc ".into(), true));
    assert_eq!(run_stops(&["\n\n", "User:"], &["abc\n", "\nUser:"]), ("abc".into(), true));
    // Overlapping stops: the one that starts first wins.
    assert_eq!(run_stops(&["B", "AB"], &["xA", "B"]), ("x".into(), true));
}

#[test]
fn partial_prefix_is_held_then_released() {
    let mut s = StopStrings::new(vec!["STOP".into()]);
    assert_eq!(s.push("ab ST"), ("ab ".to_string(), false));
    assert_eq!(s.push("A"), ("STA".to_string(), false)); // "STA" cannot start "STOP"
    assert_eq!(s.push("RT"), ("RT".to_string(), false));
    let mut s = StopStrings::new(vec!["STOP".into()]);
    assert_eq!(s.push("ab STO"), ("ab ".to_string(), false));
    assert_eq!(s.flush(), "STO");
}

#[test]
fn multibyte_stops_and_text() {
    let mut s = StopStrings::new(vec!["日本".into()]);
    assert_eq!(s.push("こんにちは日"), ("こんにちは".to_string(), false));
    assert_eq!(s.push("本語"), (String::new(), true));

    let mut s = StopStrings::new(vec!["é!".into()]);
    assert_eq!(s.push("café"), ("caf".to_string(), false));
    assert_eq!(s.push("?"), ("é?".to_string(), false));
    // "ã" shares its first byte with "é" but is not a prefix of it.
    assert_eq!(s.push("ã"), ("ã".to_string(), false));
}

#[test]
fn no_stop_passes_text_through() {
    let chunks = ["Hello", ", wö", "rld", " S", "TO", "!"];
    let joined: String = chunks.concat();
    assert_eq!(run_stops(&[], &chunks), (joined.clone(), false));
    assert_eq!(run_stops(&[""], &chunks), (joined.clone(), false));
    assert_eq!(run_stops(&["STOP", "zzz"], &chunks), (joined, false));
}
