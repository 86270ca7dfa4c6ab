//! Routing modes and traces: parsing (hostile files give clear errors), sticky routing's reuse
//! rate, trace replay, the recorder's round trip through a real run, and that a routing mode
//! changes which experts run while the router's weights stay its own.

use rotary::model::weights::{ModelFile, Weights};
use rotary::ops::oracle::softmax;
use rotary::rotary::BackendKind;
use rotary::routing::stats::{lru_hit_rate, trace_stats, Spread, LRU_RESIDENCY};
use rotary::routing::{Recorder, Router, RoutingMode, Trace, TEXT_SEED};
use rotary::Engine;
use rotary::{Logits, Session};

#[test]
fn modes_parse_and_reject_clearly() {
    assert!(matches!(RoutingMode::parse("model"), Ok(RoutingMode::Model)));
    assert!(matches!(RoutingMode::parse("sticky:0.45"), Ok(RoutingMode::Sticky(p)) if p == 0.45));
    assert!(matches!(RoutingMode::parse("trace:x.trace"), Ok(RoutingMode::Trace(_))));
    assert!(matches!(RoutingMode::parse("text"), Ok(RoutingMode::Text(TEXT_SEED))));
    assert!(matches!(RoutingMode::parse("text:7"), Ok(RoutingMode::Text(7))));
    assert_eq!(RoutingMode::Text(TEXT_SEED).label(), "text");
    assert_eq!(RoutingMode::Text(7).label(), "text:7");
    for bad in ["sticky:1.5", "sticky:x", "trace:", "random", "", "text:", "text:-1"] {
        let e = RoutingMode::parse(bad).err().unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(e.to_string().contains(&format!("routing mode {bad}")), "{e}");
    }
    assert_eq!(RoutingMode::Sticky(0.45).label(), "sticky:0.45");
}

#[test]
fn trace_files_are_checked() {
    let ok = "rotary-routing v1 layers=2 k=2\n1 2;3 4\n5 6;7 0\n";
    let t = Trace::parse(ok).expect("valid");
    assert_eq!(t.tokens, vec![vec![vec![1, 2], vec![3, 4]], vec![vec![5, 6], vec![7, 0]]]);
    for (bad, why) in [
        ("", "empty"),
        ("rotary-routing v2 layers=2 k=2\n1 2;3 4\n", "header"),
        ("rotary-routing v1 layers=2\n1 2;3 4\n", "layers= and k="),
        ("rotary-routing v1 layers=2 k=2\n1 2\n", "layer groups"),
        ("rotary-routing v1 layers=2 k=2\n1 2;3\n", "ids in a group"),
        ("rotary-routing v1 layers=2 k=2\n1 x;3 4\n", "not a number"),
        ("rotary-routing v1 layers=2 k=2\n", "no tokens"),
        ("rotary-routing v1 layers=99999 k=2\n", "bad layers="),
        ("rotary-routing v1 layers=2 k=2 experts=1\n1 2;3 4\n", "bad experts="),
        ("rotary-routing v1 layers=2 k=2 experts=4\n1 2;3 4\n", "expert 4 in a trace"),
    ] {
        let e = Trace::parse(bad).expect_err(why).to_string();
        assert!(e.contains(why), "{why}: {e}");
    }
}

fn probs(n: usize, e: usize, seed: u64) -> Vec<f32> {
    let mut p = rotary::synth::random_f32(n * e, 0.0, 2.0, seed);
    p.chunks_exact_mut(e).for_each(softmax);
    p
}

#[test]
fn sticky_repeats_the_previous_set_at_about_p() {
    let (e, k, tokens) = (64, 8, 2000);
    let mut r = Router::new(RoutingMode::Sticky(0.45), 1, e, k, 7).expect("router");
    let (mut ids, mut w) = (vec![0usize; k], vec![0f32; k]);
    let mut prev: Option<Vec<usize>> = None;
    let mut same = 0;
    for t in 0..tokens {
        let p = probs(1, e, t as u64);
        r.route(0, &p, true, &mut ids, &mut w).expect("route");
        let mut set = ids.clone();
        set.sort_unstable();
        if prev.as_ref() == Some(&set) {
            same += 1;
        }
        prev = Some(set);
        // Weights are the router's probabilities of the chosen experts, renormalised.
        let sum: f32 = ids.iter().map(|&i| p[i]).sum();
        for (j, &i) in ids.iter().enumerate() {
            assert!((w[j] - p[i] / sum).abs() < 1e-6);
        }
    }
    let rate = same as f64 / (tokens - 1) as f64;
    assert!((rate - 0.45).abs() < 0.05, "repeat rate {rate}");
}

#[test]
fn recorded_routing_replays_exactly() {
    let file = ModelFile::Gguf(rotary::run::embedded_default().expect("tiny"));
    let w = Weights::load(&file).expect("weights");
    let (l, k) = (w.cfg.n_layers as usize, w.cfg.n_experts_used as usize);
    let e = w.cfg.n_experts as usize;
    let dir = std::env::temp_dir().join(format!("rotary-routing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("run.trace");
    let tokens: Vec<u32> = (0..9).map(|i| 100 + 37 * i).collect();

    // Model routing, recorded.
    let mut s = Session::open(&w, BackendKind::CpuRef, 64, None).expect("session");
    let mut rec = Router::new(RoutingMode::Model, l, e, k, 1).expect("router");
    rec.record_to(Recorder::create(&path, l, e, k).expect("recorder"));
    s.set_router(rec);
    let model_logits = s.forward(&tokens, Logits::All).expect("forward");
    let plain = {
        let mut s = Session::open(&w, BackendKind::CpuRef, 64, None).expect("session");
        s.forward(&tokens, Logits::All).expect("forward")
    };
    assert_eq!(model_logits, plain, "model routing through the Router equals the built-in top-k");
    let trace = Trace::load(&path).expect("trace written");
    assert_eq!((trace.n_layers, trace.k, trace.tokens.len()), (l, k, tokens.len()));

    // Replaying the trace gives the same experts, hence the same logits.
    let mut s = Session::open(&w, BackendKind::CpuRef, 64, None).expect("session");
    s.set_router(Router::new(RoutingMode::Trace(path.clone()), l, e, k, 1).expect("router"));
    assert_eq!(s.forward(&tokens, Logits::All).expect("forward"), plain);

    // Sticky routing with P = 1 changes what runs after the first token.
    let mut s = Session::open(&w, BackendKind::CpuRef, 64, None).expect("session");
    s.set_router(Router::new(RoutingMode::Sticky(1.0), l, e, k, 1).expect("router"));
    assert_ne!(s.forward(&tokens, Logits::All).expect("forward"), plain);

    // A trace for another shape is refused with both shapes named.
    let err = Router::new(RoutingMode::Trace(path.clone()), l + 1, e, k, 1).err().expect("refused");
    assert!(err.to_string().contains("layers"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The statistics tool on hand-made traces whose answers are worked out by hand.
#[test]
fn trace_statistics_have_the_known_answers() {
    // One layer, k = 2, 8 experts. Sets: {0,1} {1,2} {1,2} {3,4} {0,5}.
    let t = Trace::parse("rotary-routing v1 layers=1 k=2 experts=8\n0 1\n1 2\n2 1\n3 4\n0 5\n")
        .expect("trace");
    let st = trace_stats(&t, 8, 2).expect("stats");
    let l = &st.layers[0];
    // Next-token overlaps: 1, 2, 0, 0 of 2 → 3/8.
    assert!((l.reuse_next - 3.0 / 8.0).abs() < 1e-12, "{}", l.reuse_next);
    // Within 2 tokens: t1 {0,1}: 1; t2 {0,1,1,2}: 2; t3 {1,2}: 0; t4 {1,2,3,4}: 0 → 3/8.
    assert!((l.reuse_window - 3.0 / 8.0).abs() < 1e-12, "{}", l.reuse_window);
    // One exact repeat ({1,2} then {2,1}) in 4 pairs.
    assert!((l.exact_repeats - 0.25).abs() < 1e-12);
    // Counts: 1 → 3, 2 → 2, 0 → 2, 3, 4, 5 → 1: the top ceil(8/8) = 1 expert carries 3 of 10.
    assert!((l.top_share - 0.3).abs() < 1e-12);
    assert_eq!(l.distinct, 6);
    // The ids in order: 0 1 1 2 2 1 3 4 0 5. LRU of 1 expert hits the second 1 and the second 2.
    assert!((lru_hit_rate([0, 1, 1, 2, 2, 1, 3, 4, 0, 5].into_iter(), 1) - 0.2).abs() < 1e-12);
    // LRU of 3: hits 1, 2, 1 → 3 of 10; LRU of 6 holds all: those and the returning 0 → 4.
    assert!((lru_hit_rate([0, 1, 1, 2, 2, 1, 3, 4, 0, 5].into_iter(), 3) - 0.3).abs() < 1e-12);
    assert!((lru_hit_rate([0, 1, 1, 2, 2, 1, 3, 4, 0, 5].into_iter(), 6) - 0.4).abs() < 1e-12);
    // The curve's residencies on 8 experts: round(0.05·8) = 0 → 1 expert (at least one).
    assert_eq!(l.lru.len(), LRU_RESIDENCY.len());
    assert!((l.lru[0] - 0.2).abs() < 1e-12);
    // Ids beyond the expert count are refused, naming the count.
    let e = trace_stats(&t, 4, 2).expect_err("expert 4 of 4").to_string();
    assert!(e.contains("expert 4 of 4"), "{e}");
}

/// `--routing text` hits every band the issue set at the real shapes' expert counts (128 and 256
/// experts, k = 8) and small's (64) over 256 tokens, and its layers differ.
#[test]
fn text_routing_has_the_published_statistics() {
    for (e, layers) in [(128, 6), (256, 6), (64, 4)] {
        let t = Trace::text(layers, e, 8, TEXT_SEED, 256);
        let st = trace_stats(&t, e, 8).expect("stats");
        let (r1, r8, top, rep) =
            (st.reuse_next(), st.reuse_window(), st.top_share(), st.exact_repeats());
        println!("{e} experts: reuse next {r1:?} within 8 {r8:?} top {top:?} repeats {rep:?}");
        // The bands hold for the mean over layers; a layer's 256 tokens add sampling noise
        // (next-token reuse: σ ≈ 1.1 points), so each layer gets 2 points more.
        let within = |s: Spread, lo: f64, hi: f64| {
            (lo..=hi).contains(&s.mean) && s.min >= lo - 0.02 && s.max <= hi + 0.02
        };
        assert!(within(r1, 0.42, 0.48), "{e}: next-token reuse {r1:?}");
        assert!(within(r8, 0.76, 0.84), "{e}: reuse within 8 {r8:?}");
        assert!(within(top, 0.35, 0.45), "{e}: top-12.5% share {top:?}");
        assert!(rep.max <= 0.05, "{e}: exact repeats {rep:?}");
        assert_ne!(t.tokens[5][0], t.tokens[5][1], "layers 0 and 1 route alike");
    }
    // Deterministic by seed, different across seeds.
    assert_eq!(Trace::text(2, 64, 8, 3, 20), Trace::text(2, 64, 8, 3, 20));
    assert_ne!(Trace::text(2, 64, 8, 3, 20), Trace::text(2, 64, 8, 4, 20));
}

/// Text routing through the Router: the experts are the generator's, the weights the router's
/// probabilities of them, and the same whether layers are asked token by token or in batches.
#[test]
fn text_routing_weights_are_the_routers() {
    let (e, k, l) = (64, 8, 2);
    let want = Trace::text(l, e, k, 11, 6);
    let mut r = Router::new(RoutingMode::Text(11), l, e, k, 0).expect("router");
    // A batch of 6 tokens per layer (a prompt), layer by layer.
    let p = probs(6, e, 5);
    for layer in 0..l {
        let (mut ids, mut w) = (vec![0usize; 6 * k], vec![0f32; 6 * k]);
        r.route(layer, &p, true, &mut ids, &mut w).expect("route");
        for t in 0..6 {
            assert_eq!(&ids[t * k..(t + 1) * k], &want.tokens[t][layer][..], "t{t} layer {layer}");
            let row = &p[t * e..(t + 1) * e];
            let sum: f32 = ids[t * k..(t + 1) * k].iter().map(|&i| row[i]).sum();
            for j in 0..k {
                assert!((w[t * k + j] - row[ids[t * k + j]] / sum).abs() < 1e-6);
            }
        }
    }
}

/// The text router's prediction for the prefetcher recalls PREDICT_RECALL of the experts it
/// then picks, and asking for it does not change what is picked.
#[test]
fn text_predictions_recall_as_stated_and_change_nothing() {
    use rotary::routing::text::{TextRouting, PREDICT_RECALL};
    let (e, k, l) = (128, 8, 2);
    let want = Trace::text(l, e, k, 5, 300);
    let mut r = TextRouting::new(l, e, k, 5);
    let (mut right, mut total) = (0, 0);
    let mut t = 0;
    while t < 300 {
        let n = 1 + t % 3; // batches of 1..3 tokens, as prompts and decode ask
        let n = n.min(300 - t);
        let pred = r.predict(1, n);
        for (i, p) in pred.iter().enumerate() {
            assert_eq!(r.next(0), want.tokens[t + i][0]);
            let got = r.next(1);
            assert_eq!(got, want.tokens[t + i][1], "token {}", t + i);
            right += p.iter().filter(|x| got.contains(x)).count();
            total += k;
            let mut distinct = p.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), k, "a prediction of k distinct experts");
        }
        t += n;
    }
    let recall = right as f64 / total as f64;
    assert!((recall - PREDICT_RECALL).abs() < 0.03, "recall {recall}");
}
