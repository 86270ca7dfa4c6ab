//! `rotary serve` (the OpenAI-compatible server of src/serve/) and `rotary chat` (a terminal
//! conversation): the CLI side, the engine thread and the terminal loop.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use rotary::sample::SamplerParams;
use rotary::serve::api::GenRequest;
use rotary::serve::http::{router, Server};
use rotary::serve::worker::{run_job, serve_jobs, Metrics, Outcome, PromptCache};
use rotary::tokenizer::Tokenizer;
use rotary::{Error, Result};
use serde_json::{json, Value};

use super::{cancel, with_session, ModelArgs, SamplingArgs};

pub struct ServeArgs {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub queue: usize,
    /// --chat-template-file's text, in place of the model's template.
    pub template: Option<String>,
}

/// The text of --chat-template-file (bounded like every config file we read).
pub fn template_file(path: Option<&std::path::Path>) -> Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    let meta =
        std::fs::metadata(path).map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
    if meta.len() > rotary::limits::JSON_CONFIG_BYTES_MAX {
        return Err(Error::Usage(format!(
            "{}: a chat template over {} bytes",
            path.display(),
            rotary::limits::JSON_CONFIG_BYTES_MAX
        )));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))
}

/// The model's name for /v1/models: its file or folder name.
fn model_id(args: &ModelArgs) -> String {
    args.model
        .as_deref()
        .and_then(|p| p.file_stem())
        .map_or_else(|| "rotary-tiny".to_string(), |n| n.to_string_lossy().into_owned())
}

pub fn cmd_serve(args: ModelArgs, s: ServeArgs) -> Result<()> {
    if s.queue == 0 {
        return Err(Error::Usage("--queue must be at least 1".into()));
    }
    let file = rotary::run::open_model(args.model.as_deref())?;
    let tok = Arc::new(rotary::run::tokenizer_for(&file)?);
    drop(file);
    let template = s.template.or_else(|| tok.chat_template().map(str::to_string));
    let metrics = Arc::new(Metrics::default());
    let (jobs, queue) = std::sync::mpsc::sync_channel(s.queue);
    let (ready_tx, ready) = std::sync::mpsc::channel::<Result<usize>>();
    let id = model_id(&args);
    let worker_metrics = metrics.clone();
    let worker = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let ready_err = ready_tx.clone();
            let r = with_session(&args, None, |engine, tok| {
                let _ = ready_tx.send(Ok(engine.n_ctx()));
                serve_jobs(engine, tok, queue, &worker_metrics);
                Ok(())
            });
            if let Err(e) = r {
                let _ = ready_err.send(Err(e));
            }
        })
        .map_err(|e| Error::Usage(format!("cannot start the engine thread: {e}")))?;
    let n_ctx = ready.recv().map_err(|_| Error::Usage("the engine thread stopped".into()))??;
    let shutdown = Arc::new(AtomicBool::new(false));
    let server = Arc::new(Server {
        jobs,
        tok,
        template,
        model_id: id,
        api_key: s.api_key,
        n_ctx,
        metrics,
        shutdown: shutdown.clone(),
        seeds: AtomicU64::new(rotary::sample::SEED_DEFAULT),
        created: rotary::serve::http::unix_now(),
    });
    // One thread for the network: the engine's threads keep the cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
    let addr = format!("{}:{}", s.host, s.port);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Usage(format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr().map_err(|e| Error::Usage(e.to_string()))?;
        eprintln!(
            "rotary serve: listening on http://{local} \
             (OpenAI API at http://{local}/v1; Ctrl-C stops)"
        );
        let stop = shutdown.clone();
        let signal = async move {
            wait_for_signal().await;
            eprintln!("rotary serve: stopping after the current token");
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        };
        rotary::serve::http::serve(listener, router(server), signal).await;
        Ok::<(), Error>(())
    })?;
    drop(rt); // the last Server (and with it the queue's sender) goes: the engine thread ends
    let _ = worker.join();
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = async {
            match signal(SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub struct ChatArgs {
    pub system: Option<String>,
    pub think: Option<bool>,
    pub n_predict: usize,
    pub sampling: SamplingArgs,
    pub template: Option<String>,
}

/// A conversation in the terminal: each turn renders the whole conversation with the model's
/// template, and the prompt cache evaluates only what the last answer did not leave in the
/// KV cache. `/exit`, `/clear`, `/save FILE`; Ctrl-C stops the answer, not the session.
pub fn cmd_chat(args: &ModelArgs, c: ChatArgs) -> Result<()> {
    let sampling = c.sampling.params();
    rotary::sample::Sampler::new(sampling.clone())?; // flags are checked before the model loads
    with_session(args, None, |engine, tok| {
        let template = chat_template(c.template.as_deref(), tok)?;
        let metrics = Metrics::default();
        let mut cache = PromptCache { tokens: Vec::new() };
        let mut messages: Vec<Value> = Vec::new();
        let system = c.system.as_ref().map(|s| json!({ "role": "system", "content": s }));
        messages.extend(system.clone());
        let stdin = std::io::stdin();
        let mut out = std::io::stdout();
        eprintln!(
            "rotary chat: /exit to quit, /clear to start over, /save FILE to keep the conversation"
        );
        let mut turn = 0u64;
        loop {
            let Some(line) = read_turn(&stdin, &mut out)? else {
                println!();
                return Ok(());
            };
            match chat_command(&line, &mut messages, &system) {
                Some(true) => return Ok(()),
                Some(false) => continue,
                None => {}
            }
            messages.push(json!({ "role": "user", "content": line }));
            let text = rotary::chat::render_json(&template, &messages, None, c.think)?;
            let ids = tok.encode(&text, true)?;
            let gen = chat_request(&sampling, turn, c.n_predict);
            turn += 1;
            cancel::reset();
            cancel::install();
            let mut answer = String::new();
            let mut emit = |t: String| {
                print!("{t}");
                let _ = out.flush();
                answer.push_str(&t);
            };
            let o = run_job(
                engine,
                tok,
                &mut cache,
                (&ids, &gen),
                &mut emit,
                &cancel::requested,
                &metrics,
            )
            .map_err(|e| Error::Usage(e.message))?;
            println!();
            print_turn_stats(&o);
            messages.push(json!({ "role": "assistant", "content": answer }));
        }
    })
}

/// The chat template: --chat-template-file's text, else the model's own.
fn chat_template(file: Option<&str>, tok: &Tokenizer) -> Result<String> {
    Ok(match file {
        Some(t) => t.to_string(),
        None => tok
            .chat_template()
            .ok_or_else(|| Error::Usage("the model has no chat template".into()))?
            .to_string(),
    })
}

/// Prompt with "> " and read one line, without its line ending; None at the end of input.
fn read_turn(stdin: &std::io::Stdin, out: &mut std::io::Stdout) -> Result<Option<String>> {
    print!("> ");
    let _ = out.flush();
    let mut line = String::new();
    if stdin.lock().read_line(&mut line).map_err(|e| Error::Usage(format!("stdin: {e}")))? == 0 {
        return Ok(None);
    }
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// A blank line or a command: Some(true) to quit, Some(false) if handled, None for a message.
fn chat_command(line: &str, messages: &mut Vec<Value>, system: &Option<Value>) -> Option<bool> {
    match line.trim() {
        "" => Some(false),
        "/exit" | "/quit" => Some(true),
        "/clear" => {
            messages.clear();
            messages.extend(system.clone());
            eprintln!("(conversation cleared)");
            Some(false)
        }
        l if l.starts_with("/save ") => {
            let path = l["/save ".len()..].trim();
            let text = serde_json::to_string_pretty(&messages).unwrap_or_default();
            match std::fs::write(path, text) {
                Ok(()) => eprintln!("(saved {} messages to {path})", messages.len()),
                Err(e) => eprintln!("error: {path}: {e}"),
            }
            Some(false)
        }
        _ => None,
    }
}

/// Turn `turn`'s settings: the sampling flags with seed + turn, no stops or penalties, streamed.
fn chat_request(sampling: &SamplerParams, turn: u64, n_predict: usize) -> GenRequest {
    GenRequest {
        sampling: SamplerParams { seed: sampling.seed.wrapping_add(turn), ..sampling.clone() },
        max_tokens: Some(n_predict),
        stops: Vec::new(),
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        stream: true,
        include_usage: false,
    }
}

/// The stderr line after an answer: prompt tokens (cached and evaluated), speed, stop reason.
fn print_turn_stats(o: &Outcome) {
    eprintln!(
        "(prompt {} tokens, {} from the cache, {} evaluated | \
         {} tokens at {:.1} tok/s, {})",
        o.prompt_tokens,
        o.cached_tokens,
        o.prompt_tokens - o.cached_tokens,
        o.completion_tokens,
        o.completion_tokens as f64 / o.decode_seconds.max(1e-9),
        o.stop_reason
    );
}
