//! Routing modes and traces: parsing (hostile files give clear errors), sticky routing's reuse
//! rate, trace replay, the recorder's round trip through a real run, and that a routing mode
//! changes which experts run while the router's weights stay its own.

use rotary::model::weights::{ModelFile, Weights};
use rotary::ops::oracle::softmax;
use rotary::rotary::BackendKind;
use rotary::routing::{Recorder, Router, RoutingMode, Trace};
use rotary::Engine;
use rotary::{Logits, Session};

#[test]
fn modes_parse_and_reject_clearly() {
    assert!(matches!(RoutingMode::parse("model"), Ok(RoutingMode::Model)));
    assert!(matches!(RoutingMode::parse("sticky:0.45"), Ok(RoutingMode::Sticky(p)) if p == 0.45));
    assert!(matches!(RoutingMode::parse("trace:x.trace"), Ok(RoutingMode::Trace(_))));
    for bad in ["sticky:1.5", "sticky:x", "trace:", "random", ""] {
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
    let mut r = Router::new(RoutingMode::Sticky(0.45), 1, k, 7).expect("router");
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
    let dir = std::env::temp_dir().join(format!("rotary-routing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("run.trace");
    let tokens: Vec<u32> = (0..9).map(|i| 100 + 37 * i).collect();

    // Model routing, recorded.
    let mut s = Session::open(&w, BackendKind::CpuRef, 64, None).expect("session");
    let mut rec = Router::new(RoutingMode::Model, l, k, 1).expect("router");
    rec.record_to(Recorder::create(&path, l, k).expect("recorder"));
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
    s.set_router(Router::new(RoutingMode::Trace(path.clone()), l, k, 1).expect("router"));
    assert_eq!(s.forward(&tokens, Logits::All).expect("forward"), plain);

    // Sticky routing with P = 1 changes what runs after the first token.
    let mut s = Session::open(&w, BackendKind::CpuRef, 64, None).expect("session");
    s.set_router(Router::new(RoutingMode::Sticky(1.0), l, k, 1).expect("router"));
    assert_ne!(s.forward(&tokens, Logits::All).expect("forward"), plain);

    // A trace for another shape is refused with both shapes named.
    let e = Router::new(RoutingMode::Trace(path.clone()), l + 1, k, 1).err().expect("refused");
    assert!(e.to_string().contains("layers"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
