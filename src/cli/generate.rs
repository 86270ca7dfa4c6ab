//! `rotary run`, `logits` and `bench`: prompt in, tokens or logits or tok/s out, with Ctrl-C
//! stopping a generation after the current token.

use super::*;

pub struct RunOptions {
    pub record_routing: Option<PathBuf>,
    pub n_predict: usize,
    pub sampling: SamplingArgs,
    pub chat: bool,
    pub think: Option<bool>,
    pub stops: Vec<String>,
}

/// The prompt as token ids: raw text, or a user turn in the model's chat template.
fn prompt_ids(tok: &Tokenizer, prompt: &str, chat: bool, think: Option<bool>) -> Result<Vec<u32>> {
    if !chat {
        return tok.encode(prompt, true);
    }
    let template = tok
        .chat_template()
        .ok_or_else(|| rotary::Error::Usage("--chat: the model has no chat template".into()))?;
    let text = rotary::chat::render(template, &[Message::new("user", prompt)], think)?;
    tok.encode(&text, true)
}

pub fn cmd_run(args: &ModelArgs, prompt: &str, o: RunOptions) -> Result<()> {
    // Flags are checked before the model loads.
    if o.think.is_some() && !o.chat {
        return Err(rotary::Error::Usage("--think needs --chat".into()));
    }
    let mut sampler = Sampler::new(o.sampling.params())?;
    let mut stops = StopStrings::new(o.stops.clone());
    cancel::install();
    with_session(args, o.record_routing.as_deref(), |session, tok| {
        let ids = prompt_ids(tok, prompt, o.chat, o.think)?;
        if !o.chat {
            print!("{prompt}");
        }
        let mut out = std::io::stdout();
        let stats = rotary::run::generate(
            session,
            tok,
            &ids,
            Generation {
                n_predict: o.n_predict,
                sample: &mut |logits, history| sampler.sample(logits, history),
                on_text: &mut |text| {
                    let (emit, stopped) = stops.push(text);
                    print!("{emit}");
                    let _ = out.flush();
                    stopped
                },
                cancelled: &cancel::requested,
            },
        )?;
        if !stops.is_stopped() {
            print!("{}", stops.flush());
        }
        println!();
        let rss = rotary::run::peak_rss_bytes().map_or("?".into(), units::human_bytes);
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s ({}) | peak RSS {rss}",
            stats.prompt_tokens,
            stats.prompt_tok_s(),
            stats.generated_tokens,
            stats.decode_tok_s(),
            stats.stop_reason
        );
        Ok(())
    })
}

/// Ctrl-C during generation: the first press stops after the current token (stats are still
/// printed); the handler then restores the default, so a second press ends the process.
pub mod cancel {
    use std::sync::atomic::{AtomicBool, Ordering};

    static REQUESTED: AtomicBool = AtomicBool::new(false);

    pub fn requested() -> bool {
        REQUESTED.load(Ordering::Relaxed)
    }

    /// Forget an earlier Ctrl-C (`rotary chat`: each answer can be stopped on its own).
    pub fn reset() {
        REQUESTED.store(false, Ordering::Relaxed);
    }

    #[cfg(unix)]
    pub fn install() {
        const SIGINT: i32 = 2;
        const SIG_DFL: usize = 0;
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        extern "C" fn on_sigint(_: i32) {
            REQUESTED.store(true, Ordering::Relaxed);
            // SAFETY: signal() is async-signal-safe; restoring the default disposition makes
            // a second Ctrl-C terminate as usual.
            unsafe { signal(SIGINT, SIG_DFL) };
        }
        // SAFETY: installs a handler that only stores to an atomic and calls signal(), both
        // async-signal-safe; libc's signal() is linked by std on every unix target.
        unsafe { signal(SIGINT, on_sigint as extern "C" fn(i32) as usize) };
    }

    #[cfg(not(unix))]
    pub fn install() {}
}

pub fn cmd_logits(
    args: &ModelArgs,
    prompt: &str,
    top: usize,
    full_last: bool,
    json: bool,
) -> Result<()> {
    with_session(args, None, |session, tok| {
        let ids = tok.encode(prompt, true)?;
        let logits = session.forward(&ids, Logits::All)?; // [n, vocab]
        let n_vocab = logits.len() / ids.len();
        let rows: Vec<&[f32]> = logits.chunks_exact(n_vocab).collect();
        let tops: Vec<Vec<(usize, f32)>> = rows.iter().map(|r| top_k(r, top)).collect();
        if json {
            let positions: Vec<String> = tops
                .iter()
                .map(|t| {
                    let pairs: Vec<String> = t.iter().map(|(i, v)| format!("[{i}, {v}]")).collect();
                    format!("{{\"top\": [{}]}}", pairs.join(", "))
                })
                .collect();
            let tokens: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            print!(
                "{{\"tokens\": [{}], \"positions\": [{}]",
                tokens.join(", "),
                positions.join(", ")
            );
            if let Some(stats) = session.rotary_stats() {
                print!(", \"stats\": {}", stats.to_json());
            }
            if full_last {
                let last: Vec<String> =
                    rows[rows.len() - 1].iter().map(|v| v.to_string()).collect();
                print!(", \"last_logits\": [{}]", last.join(", "));
            }
            println!("}}");
            return Ok(());
        }
        for (pos, (id, t)) in ids.iter().zip(&tops).enumerate() {
            let piece = String::from_utf8_lossy(tok.token_bytes(*id)).into_owned();
            let list: Vec<String> = t.iter().map(|(i, v)| format!("{i}:{v:.4}")).collect();
            println!("{pos:>4} {id:>7} {piece:<12?} top: {}", list.join("  "));
        }
        if full_last {
            let last: Vec<String> = rows[rows.len() - 1].iter().map(|v| v.to_string()).collect();
            println!("last_logits: {}", last.join(" "));
        }
        Ok(())
    })
}

pub fn cmd_bench(
    args: &ModelArgs,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
    json: bool,
) -> Result<()> {
    if reps == 0 {
        return Err(rotary::Error::Usage("-r must be at least 1".into()));
    }
    let model = args.model.as_ref().map_or("<embedded tiny>".into(), |p| p.display().to_string());
    // On the CPU, decode reads every dense weight and k experts per layer for each token.
    use rotary::rotary::BackendKind;
    let on_cpu = matches!(args.backend()?, BackendKind::Cpu | BackendKind::CpuRef);
    let weight_bytes = if on_cpu && n_gen > 0 { Some(decode_weight_bytes(args)?) } else { None };
    with_session(args, None, |session, tok| {
        let threads = session.threads();
        let r = rotary::run::bench(session, tok.n_vocab(), n_prompt, n_gen, reps)?;
        // Bytes per decode token against what this machine's memory can deliver.
        let traffic = weight_bytes.map(|(dense, experts)| {
            let bytes = (dense + experts) as f64;
            (dense, experts, bytes * r.tg_tok_s / 1e9, rotary::backend::cpu::read_gbps(threads))
        });
        if json {
            let stats = session
                .rotary_stats()
                .map_or(String::new(), |s| format!(", \"stats\": {}", s.to_json()));
            let traffic = traffic.map_or(String::new(), |(dense, experts, gbps, read)| {
                format!(
                    ", \"weight_bytes_per_token\": {}, \"tg_weight_gbps\": {gbps:.3}, \
                     \"read_gbps\": {read:.3}",
                    dense + experts
                )
            });
            println!(
                "{{\"model\": {model:?}, \"backend\": {:?}, \"threads\": {threads}, \
                 \"n_prompt\": {n_prompt}, \"n_gen\": {n_gen}, \"repetitions\": {reps}, \
                 \"pp_tok_s\": {:.3}, \"pp_tok_s_sd\": {:.3}, \"tg_tok_s\": {:.3}, \
                 \"tg_tok_s_sd\": {:.3}{traffic}{stats}}}",
                session.backend_name(),
                r.pp_tok_s,
                r.pp_tok_s_sd,
                r.tg_tok_s,
                r.tg_tok_s_sd
            );
        } else {
            println!("| model | backend | threads | test | t/s |");
            println!("| --- | --- | ---: | --- | ---: |");
            let b = session.backend_name();
            println!(
                "| {model} | {b} | {threads} | pp{n_prompt} | {:.2} ± {:.2} |",
                r.pp_tok_s, r.pp_tok_s_sd
            );
            println!(
                "| {model} | {b} | {threads} | tg{n_gen} | {:.2} ± {:.2} |",
                r.tg_tok_s, r.tg_tok_s_sd
            );
            if let Some((dense, experts, gbps, read)) = traffic {
                let mb = |b: u64| b as f64 / 1e6;
                println!(
                    "decode reads {:.1} MB of weights per token (dense {:.1} + experts {:.1}): \
                     {gbps:.1} GB/s at tg{n_gen}, {:.0}% of this machine's {threads}-thread read \
                     bandwidth ({read:.1} GB/s, measured now)",
                    mb(dense + experts),
                    mb(dense),
                    mb(experts),
                    100.0 * gbps / read
                );
            }
        }
        Ok(())
    })
}

/// (dense, routed experts) weight bytes one decode token reads on the CPU: every tensor but
/// the experts and the embedding table (one row per token), and k experts per layer.
fn decode_weight_bytes(args: &ModelArgs) -> Result<(u64, u64)> {
    let report = match args.model.as_ref() {
        Some(dir) if dir.is_dir() => {
            Report::from_hf(&HfDir::open(dir)?, None).map_err(|e| e.in_file(dir))?
        }
        Some(path) => Report::new(&Gguf::open(path)?, None).map_err(|e| e.in_file(path))?,
        None => Report::new(&embedded_default()?, None)?,
    };
    Ok((report.dense_resident_bytes(), report.expert_bytes_per_token))
}
